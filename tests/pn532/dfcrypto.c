/*
 * dfcrypto.c - block ciphers (OpenSSL EVP), DESFire chaining, CMAC and CRCs.
 */
#include "tests/pn532/dfcrypto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

size_t df_block_size(enum df_cipher c)
{
    return c == DF_AES ? 16 : 8;
}

size_t df_key_size(enum df_cipher c)
{
    return c == DF_3K3DES ? 24 : 16;
}

const char *df_cipher_name(enum df_cipher c)
{
    switch (c) {
    case DF_DES:
        return "des";
    case DF_3DES:
        return "3des";
    case DF_3K3DES:
        return "3k3des";
    case DF_AES:
        return "aes";
    }
    return "?";
}

void df_ecb(enum df_cipher c, const uint8_t *key, bool encrypt, const uint8_t *in, uint8_t *out)
{
    const EVP_CIPHER *cipher = NULL;
    switch (c) {
    case DF_DES:
    case DF_3DES:
        cipher = EVP_des_ede_ecb();
        break;
    case DF_3K3DES:
        cipher = EVP_des_ede3_ecb();
        break;
    case DF_AES:
        cipher = EVP_aes_128_ecb();
        break;
    }
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n = 0, m = 0;
    int bs = (int)df_block_size(c);
    if (!ctx || !cipher || EVP_CipherInit_ex(ctx, cipher, NULL, key, NULL, encrypt ? 1 : 0) != 1 ||
        EVP_CIPHER_CTX_set_padding(ctx, 0) != 1 || EVP_CipherUpdate(ctx, out, &n, in, bs) != 1 ||
        EVP_CipherFinal_ex(ctx, out + n, &m) != 1 || n + m != bs) {
        fprintf(stderr, "pn532_emu: OpenSSL %s failed\n", df_cipher_name(c));
        abort();
    }
    EVP_CIPHER_CTX_free(ctx);
}

static void xor_into(uint8_t *dst, const uint8_t *src, size_t len)
{
    for (size_t i = 0; i < len; i++)
        dst[i] ^= src[i];
}

void df_cbc_encrypt(enum df_cipher c, const uint8_t *key, uint8_t *iv, uint8_t *buf, size_t len)
{
    size_t bs = df_block_size(c);
    for (size_t off = 0; off + bs <= len; off += bs) {
        xor_into(buf + off, iv, bs);
        df_ecb(c, key, true, buf + off, buf + off);
        memcpy(iv, buf + off, bs);
    }
}

void df_cbc_decrypt(enum df_cipher c, const uint8_t *key, uint8_t *iv, uint8_t *buf, size_t len)
{
    size_t bs = df_block_size(c);
    uint8_t ct[DF_MAX_BLOCK];
    for (size_t off = 0; off + bs <= len; off += bs) {
        memcpy(ct, buf + off, bs);
        df_ecb(c, key, false, buf + off, buf + off);
        xor_into(buf + off, iv, bs);
        memcpy(iv, ct, bs);
    }
}

void df_legacy_receive(enum df_cipher c, const uint8_t *key, uint8_t *buf, size_t len)
{
    size_t bs = df_block_size(c);
    uint8_t prev[DF_MAX_BLOCK] = {0}, y[DF_MAX_BLOCK];
    for (size_t off = 0; off + bs <= len; off += bs) {
        memcpy(y, buf + off, bs);
        df_ecb(c, key, true, buf + off, buf + off);
        xor_into(buf + off, prev, bs);
        memcpy(prev, y, bs);
    }
}

static void shift_left_one_bit(uint8_t *b, size_t len)
{
    for (size_t i = 0; i + 1 < len; i++)
        b[i] = (uint8_t)((b[i] << 1) | (b[i + 1] >> 7));
    b[len - 1] = (uint8_t)(b[len - 1] << 1);
}

void df_session_init(struct df_session *s, enum df_cipher c, const uint8_t *key)
{
    size_t bs = df_block_size(c);
    uint8_t r = bs == 8 ? 0x1B : 0x87;
    uint8_t l[DF_MAX_BLOCK] = {0};

    memset(s, 0, sizeof(*s));
    s->cipher = c;
    memcpy(s->key, key, df_key_size(c));
    df_ecb(c, s->key, true, l, l);

    memcpy(s->k1, l, bs);
    shift_left_one_bit(s->k1, bs);
    if (l[0] & 0x80)
        s->k1[bs - 1] ^= r;
    memcpy(s->k2, s->k1, bs);
    shift_left_one_bit(s->k2, bs);
    if (s->k1[0] & 0x80)
        s->k2[bs - 1] ^= r;
}

void df_cmac(struct df_session *s, const uint8_t *data, size_t len, uint8_t *mac)
{
    size_t bs = df_block_size(s->cipher);
    size_t full = len == 0 ? 0 : (len - 1) / bs; /* blocks before the last one */
    uint8_t last[DF_MAX_BLOCK] = {0};
    size_t rest = len - full * bs;

    for (size_t i = 0; i < full; i++) {
        uint8_t blk[DF_MAX_BLOCK];
        memcpy(blk, data + i * bs, bs);
        df_cbc_encrypt(s->cipher, s->key, s->iv, blk, bs);
    }
    memcpy(last, data + full * bs, rest);
    if (rest == bs) {
        xor_into(last, s->k1, bs);
    } else {
        last[rest] = 0x80;
        xor_into(last, s->k2, bs);
    }
    df_cbc_encrypt(s->cipher, s->key, s->iv, last, bs);
    memcpy(mac, s->iv, bs);
}

uint32_t df_crc32(const uint8_t *data, size_t len)
{
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < len; i++) {
        crc ^= data[i];
        for (int b = 0; b < 8; b++)
            crc = (crc & 1) ? (crc >> 1) ^ 0xEDB88320u : crc >> 1;
    }
    return crc;
}

uint16_t df_crc16(const uint8_t *data, size_t len)
{
    uint16_t crc = 0x6363;
    for (size_t i = 0; i < len; i++) {
        crc ^= data[i];
        for (int b = 0; b < 8; b++)
            crc = (crc & 1) ? (uint16_t)((crc >> 1) ^ 0x8408) : (uint16_t)(crc >> 1);
    }
    return crc;
}

void df_rol(uint8_t *buf, size_t len)
{
    uint8_t first = buf[0];
    memmove(buf, buf + 1, len - 1);
    buf[len - 1] = first;
}
