// Drives the platform emulator with the official AWS IoT Device SDK v2 for
// JavaScript, the library the LifeOmic device samples are written with:
// fleet provisioning in both modes through IotIdentityClient, the Jobs API
// through IotJobsClient, an observation and a file upload as the samples do.
//
// Usage: node fidelity.js CONFIG.json   (written by tests/test_fidelity.py)
// Prints one JSON summary line on success; exits non-zero on any failure.
'use strict';

const fs = require('fs');
const path = require('path');
const crypto = require('crypto');
const http = require('http');
const { mqtt, iot, iotidentity, iotjobs } = require('aws-iot-device-sdk-v2');

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const QOS1 = mqtt.QoS.AtLeastOnce;
const TEMPLATE = 'DefaultProvisioningTemplate';
const STEP_TIMEOUT_MS = 15000;

function log(...args) {
  console.error('[fidelity]', ...args);
}

function withTimeout(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), STEP_TIMEOUT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// The emulator's control endpoint (the same one the Python API uses).
function control(method, params) {
  const body = JSON.stringify({ method, params });
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: '127.0.0.1', port: config.control_port, path: '/rpc', method: 'POST',
      headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) },
    }, (res) => {
      let data = '';
      res.on('data', (c) => { data += c; });
      res.on('end', () => {
        const parsed = JSON.parse(data);
        if (res.statusCode !== 200) reject(new Error(`${method}: ${parsed.error}`));
        else resolve(parsed.result);
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function connect(certPath, keyPath, clientId, cleanSession) {
  const builder = iot.AwsIotMqttConnectionConfigBuilder
    .new_mtls_builder_from_path(certPath, keyPath)
    .with_certificate_authority_from_path(undefined, config.ca_file)
    .with_endpoint(config.host)
    .with_port(config.mqtt_port)
    .with_client_id(clientId)
    .with_clean_session(cleanSession)
    .with_keep_alive_seconds(1200);
  const client = new mqtt.MqttClient();
  const connection = client.new_connection(builder.build());
  await withTimeout(connection.connect(), `connect ${clientId}`);
  return connection;
}

// Subscribes to an accepted/rejected pair, then publishes; resolves with the
// accepted response, rejects with the rejected one.
function request(subscribeAccepted, subscribeRejected, publish, what) {
  return withTimeout(new Promise((resolve, reject) => {
    const onAccepted = (error, response) => (error ? reject(error) : resolve(response));
    const onRejected = (error, response) => {
      const err = new Error(`${what} rejected: ${JSON.stringify(response)}`);
      err.response = response;
      reject(error || err);
    };
    Promise.all([subscribeAccepted(onAccepted), subscribeRejected(onRejected)])
      .then(publish)
      .catch(reject);
  }), what);
}

function assert(condition, message) {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}

function writeDevice(thing, certPem, keyPem) {
  const base = path.join(config.workdir, thing.replace(/:/g, '_'));
  fs.writeFileSync(`${base}.pem`, certPem);
  fs.writeFileSync(`${base}.key`, keyPem, { mode: 0o600 });
  return { cert: `${base}.pem`, key: `${base}.key` };
}

async function provisionWithKeys(identity) {
  const created = await request(
    (h) => identity.subscribeToCreateKeysAndCertificateAccepted({}, QOS1, h),
    (h) => identity.subscribeToCreateKeysAndCertificateRejected({}, QOS1, h),
    () => identity.publishCreateKeysAndCertificate({}, QOS1),
    'CreateKeysAndCertificate');
  assert(/^[0-9a-f]{64}$/.test(created.certificateId), 'certificateId');
  assert(created.privateKey.includes('PRIVATE KEY'), 'privateKey');

  // A bad token first: the SDK must parse the platform's error response.
  let rejection;
  try {
    await register(identity, 'not-a-token', 'FID-BAD');
  } catch (e) {
    rejection = e.response;
  }
  assert(rejection && rejection.statusCode === 400 &&
         rejection.errorCode === 'InvalidCertificateOwnershipToken' &&
         typeof rejection.errorMessage === 'string', 'RegisterThing rejection shape');

  const thing = await register(identity, created.certificateOwnershipToken, 'FID-KEYS');
  return { thing, ...writeDevice(thing, created.certificatePem, created.privateKey), rejection };
}

async function provisionWithCsr(identity) {
  const csr = fs.readFileSync(config.csr_file, 'utf8');
  const created = await request(
    (h) => identity.subscribeToCreateCertificateFromCsrAccepted({}, QOS1, h),
    (h) => identity.subscribeToCreateCertificateFromCsrRejected({}, QOS1, h),
    () => identity.publishCreateCertificateFromCsr({ certificateSigningRequest: csr }, QOS1),
    'CreateCertificateFromCsr');
  assert(created.privateKey === undefined, 'no privateKey in CSR mode');
  const thing = await register(identity, created.certificateOwnershipToken, 'FID-CSR');
  return { thing, ...writeDevice(thing, created.certificatePem, fs.readFileSync(config.csr_key_file, 'utf8')) };
}

async function register(identity, token, serial) {
  const response = await request(
    (h) => identity.subscribeToRegisterThingAccepted({ templateName: TEMPLATE }, QOS1, h),
    (h) => identity.subscribeToRegisterThingRejected({ templateName: TEMPLATE }, QOS1, h),
    () => identity.publishRegisterThing({
      templateName: TEMPLATE,
      certificateOwnershipToken: token,
      parameters: { SerialNumber: serial, Manufacturer: 'acme', Name: 'fidelity', Model: 'gw-1' },
    }, QOS1),
    'RegisterThing');
  assert(response.thingName.startsWith(`${config.account}:`), 'thing name ACCOUNT:UUID');
  return response.thingName;
}

// As the samples' uploadObservation script does.
async function observe(connection, thing) {
  const accepted = new Promise((resolve) => {
    connection.subscribe(`${thing}/FHIRIngest/accepted`, QOS1, (topic, payload) => {
      resolve(JSON.parse(Buffer.from(payload).toString()));
    }).then(() => connection.publish('$aws/rules/FHIRIngest', JSON.stringify({
      value: 100, unit: '%',
      coding: [{ code: '9750d5e5-d766-4793-a97d-16179578cc4d',
                 system: 'http://lifeomic.com/fhir/devices', display: 'Battery Percentage' }],
    }), QOS1));
  });
  return withTimeout(accepted, 'FHIRIngest accepted');
}

// As the samples' uploadFile script does: ask for a link on
// $aws/rules/CreateFileUploadLink, the answer comes on the thing's topic.
async function upload(connection, thing, data) {
  const link = new Promise((resolve) => {
    connection.subscribe(thing, QOS1, (topic, payload) => {
      resolve(JSON.parse(Buffer.from(payload).toString()));
    }).then(() => connection.publish('$aws/rules/CreateFileUploadLink',
      JSON.stringify({ fileName: 'dice.png', contentType: 'image/png' }), QOS1));
  });
  const { uploadUrl } = await withTimeout(link, 'upload link');
  const res = await fetch(uploadUrl, { method: 'PUT', body: data,
                                       headers: { 'Content-Type': 'image/png' } });
  assert(res.status === 200, `PUT answered ${res.status}`);
}

async function firmwareJob(connection, thing) {
  const jobs = new iotjobs.IotJobsClient(connection);
  const firmware = crypto.randomBytes(70000);
  await control('add_firmware', { firmware_id: 'fid-fw', data_b64: firmware.toString('base64') });

  const notified = new Promise((resolve) => {
    jobs.subscribeToNextJobExecutionChangedEvents({ thingName: thing }, QOS1, (error, event) => {
      if (!error && event.execution) resolve(event.execution);
    });
  });
  // Let the subscription settle before the job is queued: a describe round
  // trip on the same connection proves the SUBSCRIBE was handled.
  await request(
    (h) => jobs.subscribeToGetPendingJobExecutionsAccepted({ thingName: thing }, QOS1, h),
    (h) => jobs.subscribeToGetPendingJobExecutionsRejected({ thingName: thing }, QOS1, h),
    () => jobs.publishGetPendingJobExecutions({ thingName: thing }, QOS1),
    'GetPendingJobExecutions (empty)');
  const jobId = await control('queue_job', { thing, firmware_id: 'fid-fw', deployment_id: 'dep-fid' });
  const pushed = await withTimeout(notified, 'notify-next');
  assert(pushed.jobId === jobId && pushed.status === 'QUEUED', 'notify-next execution');

  const pending = await request(
    (h) => jobs.subscribeToGetPendingJobExecutionsAccepted({ thingName: thing }, QOS1, h),
    (h) => jobs.subscribeToGetPendingJobExecutionsRejected({ thingName: thing }, QOS1, h),
    () => jobs.publishGetPendingJobExecutions({ thingName: thing }, QOS1),
    'GetPendingJobExecutions');
  assert(pending.queuedJobs.length === 1 && pending.queuedJobs[0].jobId === jobId, 'queuedJobs');

  const described = await request(
    (h) => jobs.subscribeToDescribeJobExecutionAccepted({ thingName: thing, jobId }, QOS1, h),
    (h) => jobs.subscribeToDescribeJobExecutionRejected({ thingName: thing, jobId }, QOS1, h),
    () => jobs.publishDescribeJobExecution({ thingName: thing, jobId, includeJobDocument: true }, QOS1),
    'DescribeJobExecution');
  const doc = described.execution.jobDocument;
  assert(doc.operation === 'firmware_update' && doc.firmwareId === 'fid-fw' &&
         doc.deploymentId === 'dep-fid', 'job document');

  const started = await request(
    (h) => jobs.subscribeToStartNextPendingJobExecutionAccepted({ thingName: thing }, QOS1, h),
    (h) => jobs.subscribeToStartNextPendingJobExecutionRejected({ thingName: thing }, QOS1, h),
    () => jobs.publishStartNextPendingJobExecution({ thingName: thing,
                                                     statusDetails: { percentProgress: '0' } }, QOS1),
    'StartNextPendingJobExecution');
  assert(started.execution.jobId === jobId && started.execution.status === 'IN_PROGRESS', 'started');

  const res = await fetch(started.execution.jobDocument.firmwareUrl);
  const image = Buffer.from(await res.arrayBuffer());
  assert(res.status === 200 && image.equals(firmware), 'firmware download');

  const update = (status, percent, expectedVersion) => request(
    (h) => jobs.subscribeToUpdateJobExecutionAccepted({ thingName: thing, jobId }, QOS1, h),
    (h) => jobs.subscribeToUpdateJobExecutionRejected({ thingName: thing, jobId }, QOS1, h),
    () => jobs.publishUpdateJobExecution({ thingName: thing, jobId, status,
                                           statusDetails: { percentProgress: percent },
                                           expectedVersion, includeJobExecutionState: true }, QOS1),
    `UpdateJobExecution ${status}`);
  const progressed = await update(iotjobs.model.JobStatus.IN_PROGRESS, '50', started.execution.versionNumber);
  assert(progressed.executionState.statusDetails.percentProgress === '50', 'progress stored');
  let mismatch;
  try {
    await update(iotjobs.model.JobStatus.IN_PROGRESS, '60', 1);
  } catch (e) {
    mismatch = e.response;
  }
  assert(mismatch && mismatch.code === 'VersionMismatch', 'VersionMismatch rejection');
  await update(iotjobs.model.JobStatus.SUCCEEDED, '100');
  let terminal;
  try {
    await update(iotjobs.model.JobStatus.FAILED, '100');
  } catch (e) {
    terminal = e.response;
  }
  assert(terminal && terminal.code === 'TerminalStateReached', 'TerminalStateReached rejection');
  return { jobId, firmwareSha256: crypto.createHash('sha256').update(firmware).digest('hex') };
}

async function main() {
  const summary = {};
  const claim = await connect(config.claim_cert, config.claim_key, `claim-${crypto.randomUUID()}`, true);
  const identity = new iotidentity.IotIdentityClient(claim);
  const keys = await provisionWithKeys(identity);
  const csr = await provisionWithCsr(identity);
  await claim.disconnect();
  summary.things = [keys.thing, csr.thing];
  summary.registerRejection = keys.rejection;
  log('provisioned', summary.things);

  const device = await connect(keys.cert, keys.key, keys.thing, false);
  summary.observation = await observe(device, keys.thing);
  const data = crypto.randomBytes(100000);
  await upload(device, keys.thing, data);
  summary.upload = { size: data.length, sha256: crypto.createHash('sha256').update(data).digest('hex') };
  summary.job = await firmwareJob(device, keys.thing);
  await device.disconnect();

  // The CSR-provisioned device connects with its own key, too.
  const csrDevice = await connect(csr.cert, csr.key, csr.thing, false);
  summary.csrObservation = await observe(csrDevice, csr.thing);
  await csrDevice.disconnect();

  console.log(JSON.stringify(summary));
}

main().then(() => process.exit(0), (e) => {
  console.error('[fidelity] FAILED:', e && e.stack ? e.stack : e);
  process.exit(1);
});
