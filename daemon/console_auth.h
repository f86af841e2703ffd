/*
 * console_auth.h - the manager console's accounts, sessions and login throttle.
 *
 * Accounts live in a file of the console's own (default
 * /etc/lockerd/console.accounts), one per line:
 *
 *     NAME:ROLE:scrypt:LOG2N:R:P:SALT(hex, 16 bytes):HASH(hex, 32 bytes)
 *
 * ROLE is manager or technician. The hash is OpenSSL's EVP_PBE_scrypt with
 * N = 2^15, r = 8, p = 1 (32 MiB, about 0.1 s on a Raspberry Pi 4 per attempt);
 * the parameters are stored per line so that a later work factor can be adopted
 * account by account.
 *
 * All functions are safe to call from several threads (one mutex inside); the
 * file is read once at start (auth_load) and again after --add-account in another
 * process only on restart.
 */
#ifndef LOCKERD_CONSOLE_AUTH_H
#define LOCKERD_CONSOLE_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AUTH_NAME_MAX    48
#define AUTH_SCRYPT_LOGN 15
#define AUTH_SCRYPT_R    8
#define AUTH_SCRYPT_P    1

/* Login throttle: after AUTH_FREE_FAILURES failed logins of an account (or
 * AUTH_FREE_FAILURES_ADDR from one client address) further attempts are refused,
 * without looking at the password, for 30 s, doubling with every further failure
 * up to 15 min. A successful login clears the account's count. */
#define AUTH_FREE_FAILURES      5
#define AUTH_FREE_FAILURES_ADDR 20

struct session_info {
    char account[AUTH_NAME_MAX + 1];
    char role[16];
    char csrf[65]; /* hex of 32 random bytes */
};

/* Reads the accounts file; false with a message (file:line) in why. A missing file
 * is an empty list (nobody can log in) and logged. */
bool auth_load(const char *path, char *why, size_t whylen);
/* --add-account: adds or replaces NAME with ROLE and the password, rewriting the
 * file atomically (mode 0640). false with a message in why. */
bool auth_add_account(const char *path, const char *name, const char *role, const char *password,
                      char *why, size_t whylen);

enum auth_result { AUTH_OK, AUTH_BAD, AUTH_THROTTLED };
/* Checks a login. With AUTH_THROTTLED *retry_s says how long to wait. With AUTH_OK
 * a new session is created: its id (hex, 64 characters) in sid, and *info filled. */
enum auth_result auth_login(const char *name, const char *password, const char *addr, int64_t now_s,
                            char sid[65], struct session_info *info, int *retry_s);
/* The session of a cookie value, refreshing its idle timer; false when unknown or
 * expired. */
bool auth_session(const char *sid, int64_t now_s, struct session_info *info);
void auth_logout(const char *sid);
/* Idle timeout of sessions in seconds (default 900). */
void auth_set_idle(int seconds);

#endif
