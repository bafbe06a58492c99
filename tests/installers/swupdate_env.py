# SPDX-License-Identifier: MIT
"""SWUpdate 2022.12 with A/B copies and a GRUB environment, without a bootloader,
as in the shared SWUpdate recipe. `swupdate -B grub` only knows /boot/grub/grubenv,
so everything that touches the environment (swupdate, the hook) runs in a private
mount namespace where DIR/boot is bind-mounted on /boot: env.wrap(argv).

    env = SwupdateEnv(directory)     # PKI, slots, grubenv, hook config; nothing runs
    env.swu("v2", payload)           # -> path of a signed .swu (copy1 -> slot A,
                                     #    copy2 -> slot B; bootenv rootslot, upgrade_available)
    env.swu("x", payload, signer=env.make_untrusted_signer())
    env.hook_env()                   # LODEV_SWUPDATE_CONF (the hook's config file) and
                                     # LODEV_HOOK_STATE_DIR
    SwupdateEnv(directory, mode="service")
                                     # the hook in its default mode: env.service() runs
                                     # what lodevd-swupdate.path would (the root side,
                                     # "swupdate serve", in the namespace), and the hook
                                     # itself needs no privilege (env.user: run it as
                                     # nobody, with no write access to /boot)
    env.wrap(argv)                   # argv run inside the namespace with /boot bound
    env.reboot()                     # the fake bootloader boots what rootslot says
    env.reboot(fallback=True)        # it falls back: rootslot back to the booted slot
    env.booted                       # "A" or "B" (the file the hook reads)
    env.grubenv()                    # {"rootslot": "B", "upgrade_available": "1", ...}

Nothing runs in the background: swupdate -i is a plain process and a reboot is a
change of the booted file. Needs root (mount namespace), swupdate, cpio, openssl,
grub-editenv, unshare."""

import hashlib
import os
import shutil
import subprocess
import threading
import time

from envutil import make_pki, run

HW = "test-device:1.0"

SW_DESCRIPTION = """software = {{
  version = "{version}";
  hardware-compatibility: [ "1.0" ];
  stable = {{
    copy1 = {{
      images: ( {{ filename = "rootfs.img"; device = "{d}/slotA.img"; type = "raw";
                  sha256 = "{sha}"; }} );
      bootenv: ( {{ name = "rootslot"; value = "A"; }},
                 {{ name = "upgrade_available"; value = "1"; }} );
    }};
    copy2 = {{
      images: ( {{ filename = "rootfs.img"; device = "{d}/slotB.img"; type = "raw";
                  sha256 = "{sha}"; }} );
      bootenv: ( {{ name = "rootslot"; value = "B"; }},
                 {{ name = "upgrade_available"; value = "1"; }} );
    }};
  }};
}}
"""


class SwupdateEnv:
    SLOT_SIZE = 16 * 1024 * 1024

    def __init__(self, directory, mode="standalone"):
        self.mode = mode
        self.dir = os.path.abspath(directory)
        self.pki = make_pki(os.path.join(self.dir, "pki"), "dev")
        os.makedirs(self.path("boot", "grub"), exist_ok=True)
        # Not grub-editenv create: 2022.12 stops parsing at the "# WARNING" line it writes.
        head = b"# GRUB Environment Block\n"
        with open(self.path("boot", "grub", "grubenv"), "wb") as f:
            f.write(head + b"#" * (1024 - len(head)))
        run(["grub-editenv", self.grubenv_path, "set", "rootslot=A"], check=True)
        for s in ("A", "B"):
            with open(self.slot_path(s), "wb") as f:
                f.truncate(self.SLOT_SIZE)
        self.booted_file = self.path("booted")
        self._set_booted("A")
        self.state_dir = self.path("hook-state")
        self.service_dir = self.path("service")
        self.conf = self.path("swupdate-hook.conf")
        self.user = None
        if mode == "service":
            # The hook's side runs as nobody: it reads the config and the images, and
            # writes only its requests.
            os.makedirs(self.service_dir)
            os.chown(self.service_dir, 65534, 65534)
            d = self.dir
            while d != "/":
                os.chmod(d, os.stat(d).st_mode | 0o055)
                d = os.path.dirname(d)
            self.user = "nobody"
        self.write_conf()

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    @property
    def grubenv_path(self):
        return self.path("boot", "grub", "grubenv")

    def slot_path(self, name):
        return self.path("slot%s.img" % name)

    def write_conf(self, **extra):
        """The hook's config file; keyword arguments add or replace variables."""
        values = {
            "SWUPDATE_CA": self.pki.ca_cert,
            "SWUPDATE_HWREVISION": HW,
            "SWUPDATE_SELECTION": "stable",
            "SWUPDATE_BOOTLOADER": "grub",
            "SWUPDATE_GRUBENV": "/boot/grub/grubenv",
            "SWUPDATE_BOOTED_FILE": self.booted_file,
            "SWUPDATE_MODE": self.mode,
            "SWUPDATE_SERVICE_DIR": self.service_dir,
            "SWUPDATE_FILES_DIR": self.dir,
            "SWUPDATE_SERVICE_TIMEOUT": "120",
        }
        values.update(extra)
        with open(self.conf, "w") as f:
            f.write("# written by swupdate_env.py\n")
            for k, v in values.items():
                f.write("%s='%s'\n" % (k, v.replace("'", "'\\''")))
        os.chmod(self.conf, 0o644)

    def hook_env(self):
        return {"LODEV_SWUPDATE_CONF": self.conf, "LODEV_HOOK_STATE_DIR": self.state_dir}

    def wrap(self, argv):
        """ARGV run in a private mount namespace with DIR/boot on /boot."""
        return ["unshare", "-m", "--propagation", "private", "sh", "-c",
                'mount --bind "$0" /boot && exec "$@"', self.path("boot")] + list(argv)

    def service(self):
        """What lodevd-swupdate.path and lodevd-swupdate.service do, as a context: a
        request left in the service directory starts "swupdate serve" as root in the
        namespace with /boot, one at a time."""
        return _Service(self)

    # The fake bootloader.

    def _set_booted(self, slot):
        with open(self.booted_file + ".tmp", "w") as f:
            f.write(slot + "\n")
        os.replace(self.booted_file + ".tmp", self.booted_file)

    @property
    def booted(self):
        with open(self.booted_file) as f:
            return f.read().strip()

    def grubenv(self):
        r = run(["grub-editenv", self.grubenv_path, "list"], check=True)
        return dict(l.split("=", 1) for l in r.stdout.splitlines() if "=" in l)

    def reboot(self, fallback=False):
        """Boots what rootslot names; with fallback, the bootloader gives up on it and
        boots the slot that was running (rootslot is set back first)."""
        if fallback:
            run(["grub-editenv", self.grubenv_path, "set", "rootslot=" + self.booted],
                check=True)
        self._set_booted(self.grubenv().get("rootslot", "A"))

    # Images.

    def make_untrusted_signer(self):
        return make_pki(self.path("pki-other"), "other")

    def swu(self, name, payload, version="2.0", signer=None):
        signer = signer or self.pki
        work = self.path("swu-" + name)
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        with open(os.path.join(work, "rootfs.img"), "wb") as f:
            f.write(payload)
        with open(os.path.join(work, "sw-description"), "w") as f:
            f.write(SW_DESCRIPTION.format(version=version, d=self.dir,
                                          sha=hashlib.sha256(payload).hexdigest()))
        run(["openssl", "cms", "-sign", "-in", "sw-description", "-out", "sw-description.sig",
             "-signer", signer.cert, "-inkey", signer.key, "-outform", "DER", "-nosmimecap",
             "-binary"], cwd=work, check=True)
        out = self.path(name + ".swu")
        with open(out, "wb") as f:
            r = subprocess.run(["sh", "-c", "printf '%s\\n' sw-description sw-description.sig"
                                " rootfs.img | cpio -o -H newc --quiet"],
                               cwd=work, stdout=f, stderr=subprocess.PIPE, timeout=60)
        assert r.returncode == 0, r.stderr
        return out

    def slot_starts_with(self, name, payload):
        with open(self.slot_path(name), "rb") as f:
            return f.read(len(payload)) == payload


class _Service:
    def __init__(self, env):
        self.env = env
        self.runs = []  # (op, returncode) of each serve
        self.stopping = False
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping = True
        self.thread.join(30)

    def _watch(self):
        request = os.path.join(self.env.service_dir, "request")
        hook = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "conf",
                            "hooks", "swupdate")
        e = dict(os.environ, **self.env.hook_env())
        while not self.stopping:
            if os.path.exists(request):
                with open(request) as f:
                    op = [l[3:].strip() for l in f if l.startswith("op=")]
                r = subprocess.run(self.env.wrap([os.path.abspath(hook), "serve"]), env=e,
                                   stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                   timeout=300)
                self.runs.append((op[0] if op else None, r.returncode, r.stderr))
            time.sleep(0.05)
