/* SPDX-License-Identifier: MIT */
#pragma once

/* CRC-32C (Castagnoli), the checksum of iSCSI, ext4 metadata and btrfs. A small table
 * implementation of our own, so the spool needs no zlib; it checks records of at most a few
 * hundred kilobytes, where a byte-at-a-time table is fast enough. */

#include <stddef.h>
#include <stdint.h>

/* Continues a running CRC: start with crc = 0, then feed the buffers in order.
 * crc32c(0, "123456789", 9) == 0xe3069283. */
uint32_t crc32c(uint32_t crc, const void *data, size_t len);
