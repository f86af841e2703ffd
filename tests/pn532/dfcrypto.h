/*
 * dfcrypto.h - the card-side cryptography of a MIFARE DESFire EV1.
 *
 * Block ciphers come from OpenSSL (EVP); the chaining modes, CMAC with a running IV
 * and the two CRCs are written out here because DESFire uses them in ways a library
 * mode does not cover (CMAC over a non-zero IV, legacy "send mode" deciphering).
 *
 * Keys are stored as the card stores them: DES as K||K (16 bytes), 2K3DES 16 bytes,
 * 3K3DES 24 bytes, AES-128 16 bytes. Single DES runs as DES-EDE with equal halves,
 * because OpenSSL 3 keeps single DES in the legacy provider.
 */
#ifndef PN532_DFCRYPTO_H
#define PN532_DFCRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum df_cipher {
    DF_DES,    /* 16 bytes, halves equal */
    DF_3DES,   /* 2-key triple DES, 16 bytes */
    DF_3K3DES, /* 3-key triple DES, 24 bytes */
    DF_AES,    /* AES-128 */
};

#define DF_MAX_KEY   24
#define DF_MAX_BLOCK 16

struct df_session {
    enum df_cipher cipher;
    uint8_t key[DF_MAX_KEY];
    uint8_t iv[DF_MAX_BLOCK];
    uint8_t k1[DF_MAX_BLOCK], k2[DF_MAX_BLOCK]; /* CMAC subkeys */
};

size_t df_block_size(enum df_cipher c);
size_t df_key_size(enum df_cipher c);
const char *df_cipher_name(enum df_cipher c);

/* One block, ECB. Aborts on an OpenSSL failure (the emulator cannot go on). */
void df_ecb(enum df_cipher c, const uint8_t *key, bool encrypt, const uint8_t *in, uint8_t *out);

/* Standard CBC over len bytes (a multiple of the block size), in place; iv is
 * updated to the last ciphertext block. */
void df_cbc_encrypt(enum df_cipher c, const uint8_t *key, uint8_t *iv, uint8_t *buf, size_t len);
void df_cbc_decrypt(enum df_cipher c, const uint8_t *key, uint8_t *iv, uint8_t *buf, size_t len);

/* Undoes what a legacy (DESFire EV0 style) PCD sends: it "deciphers" in CBC send mode,
 * y_i = D(x_i ^ y_{i-1}) with y_0 = 0, so the card recovers x_i = E(y_i) ^ y_{i-1}. */
void df_legacy_receive(enum df_cipher c, const uint8_t *key, uint8_t *buf, size_t len);

/* Session setup: derive the CMAC subkeys of s->key. */
void df_session_init(struct df_session *s, enum df_cipher c, const uint8_t *key);

/* CMAC (NIST SP 800-38B) over data with s->iv as the chaining value; s->iv becomes the
 * full last block, mac receives the block (DESFire sends its first 8 bytes). */
void df_cmac(struct df_session *s, const uint8_t *data, size_t len, uint8_t *mac);

/* DESFire CRC32: reflected 0xEDB88320, preset 0xFFFFFFFF, no final inversion. */
uint32_t df_crc32(const uint8_t *data, size_t len);
/* ISO/IEC 14443-A CRC (CRC_A): preset 0x6363, reflected 0x8408. */
uint16_t df_crc16(const uint8_t *data, size_t len);

/* Rotate left by one byte. */
void df_rol(uint8_t *buf, size_t len);

#endif
