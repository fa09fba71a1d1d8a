/* The record check's hot path in C: parse a submission in canonical form, hash it, recover its
 * signer. Pure: no I/O, no clock.
 *
 * `check_submission(item, separator)` accepts exactly what the Python fast path
 * (gridpoints_protocol/record.py `_fast_record`, `SignedRecord.from_json`,
 * gridpoints_protocol/commitment.py `UserOpening.from_json`) accepts, or less, and builds the
 * same objects; anything else (a missing or extra key, a decimal string, a subclass of dict or
 * str, a non-canonical signature, ...) returns None or a None signer, and the Python code then
 * decides and explains. So this module changes speed only, never an outcome:
 * tests/gridpoints_protocol/test_speedups.py runs both paths on the same inputs.
 *
 * Why C: the Python around one 30 us signature recovery cost another ~18 us per record (parsing,
 * four Keccak-256 hashes, object construction), more than the 0.8 x target allows; here
 * it is ~1 us, and the recovery runs without the interpreter lock.
 *
 * The secp256k1 calls go to the libsecp256k1 that coincurve ships (its function addresses and
 * context are handed over by gridpoints_protocol/fastcheck.py, which checks the result against
 * coincurve's own API before using it), so there is no second copy of the library to trust.
 * Keccak-256 is written out below (the Keccak-f[1600] permutation of the Keccak reference,
 * original 0x01 padding); tests compare it with pycryptodome's on every length from 0 to 600.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ---- Keccak-256 ------------------------------------------------------------------------- */

static const uint64_t keccak_round_constants[24] = {
    0x0000000000000001ULL, 0x0000000000008082ULL, 0x800000000000808aULL,
    0x8000000080008000ULL, 0x000000000000808bULL, 0x0000000080000001ULL,
    0x8000000080008081ULL, 0x8000000000008009ULL, 0x000000000000008aULL,
    0x0000000000000088ULL, 0x0000000080008009ULL, 0x000000008000000aULL,
    0x000000008000808bULL, 0x800000000000008bULL, 0x8000000000008089ULL,
    0x8000000000008003ULL, 0x8000000000008002ULL, 0x8000000000000080ULL,
    0x000000000000800aULL, 0x800000008000000aULL, 0x8000000080008081ULL,
    0x8000000000008080ULL, 0x0000000080000001ULL, 0x8000000080008008ULL,
};

#define ROTL64(x, n) (((x) << (n)) | ((x) >> (64 - (n))))
#define KECCAK256_RATE 136

/* Keccak-f[1600], one round per loop pass, fully unrolled within it (generated from the
 * specification's theta, rho, pi, chi and iota steps; lane (x, y) is state[x + 5 y]). */
static void keccak_f1600(uint64_t state[25]) {
    uint64_t a0 = state[0], a1 = state[1], a2 = state[2], a3 = state[3], a4 = state[4], a5 = state[5], a6 = state[6], a7 = state[7], a8 = state[8], a9 = state[9], a10 = state[10], a11 = state[11], a12 = state[12], a13 = state[13], a14 = state[14], a15 = state[15], a16 = state[16], a17 = state[17], a18 = state[18], a19 = state[19], a20 = state[20], a21 = state[21], a22 = state[22], a23 = state[23], a24 = state[24];
    uint64_t b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15, b16, b17, b18, b19, b20, b21, b22, b23, b24, c0, c1, c2, c3, c4, d0, d1, d2, d3, d4;
    for (int round = 0; round < 24; round++) {
        c0 = a0 ^ a5 ^ a10 ^ a15 ^ a20;
        c1 = a1 ^ a6 ^ a11 ^ a16 ^ a21;
        c2 = a2 ^ a7 ^ a12 ^ a17 ^ a22;
        c3 = a3 ^ a8 ^ a13 ^ a18 ^ a23;
        c4 = a4 ^ a9 ^ a14 ^ a19 ^ a24;
        d0 = c4 ^ ROTL64(c1, 1);
        d1 = c0 ^ ROTL64(c2, 1);
        d2 = c1 ^ ROTL64(c3, 1);
        d3 = c2 ^ ROTL64(c4, 1);
        d4 = c3 ^ ROTL64(c0, 1);
        b0 = a0 ^ d0;
        b16 = ROTL64(a5 ^ d0, 36);
        b7 = ROTL64(a10 ^ d0, 3);
        b23 = ROTL64(a15 ^ d0, 41);
        b14 = ROTL64(a20 ^ d0, 18);
        b10 = ROTL64(a1 ^ d1, 1);
        b1 = ROTL64(a6 ^ d1, 44);
        b17 = ROTL64(a11 ^ d1, 10);
        b8 = ROTL64(a16 ^ d1, 45);
        b24 = ROTL64(a21 ^ d1, 2);
        b20 = ROTL64(a2 ^ d2, 62);
        b11 = ROTL64(a7 ^ d2, 6);
        b2 = ROTL64(a12 ^ d2, 43);
        b18 = ROTL64(a17 ^ d2, 15);
        b9 = ROTL64(a22 ^ d2, 61);
        b5 = ROTL64(a3 ^ d3, 28);
        b21 = ROTL64(a8 ^ d3, 55);
        b12 = ROTL64(a13 ^ d3, 25);
        b3 = ROTL64(a18 ^ d3, 21);
        b19 = ROTL64(a23 ^ d3, 56);
        b15 = ROTL64(a4 ^ d4, 27);
        b6 = ROTL64(a9 ^ d4, 20);
        b22 = ROTL64(a14 ^ d4, 39);
        b13 = ROTL64(a19 ^ d4, 8);
        b4 = ROTL64(a24 ^ d4, 14);
        a0 = b0 ^ (~b1 & b2);
        a1 = b1 ^ (~b2 & b3);
        a2 = b2 ^ (~b3 & b4);
        a3 = b3 ^ (~b4 & b0);
        a4 = b4 ^ (~b0 & b1);
        a5 = b5 ^ (~b6 & b7);
        a6 = b6 ^ (~b7 & b8);
        a7 = b7 ^ (~b8 & b9);
        a8 = b8 ^ (~b9 & b5);
        a9 = b9 ^ (~b5 & b6);
        a10 = b10 ^ (~b11 & b12);
        a11 = b11 ^ (~b12 & b13);
        a12 = b12 ^ (~b13 & b14);
        a13 = b13 ^ (~b14 & b10);
        a14 = b14 ^ (~b10 & b11);
        a15 = b15 ^ (~b16 & b17);
        a16 = b16 ^ (~b17 & b18);
        a17 = b17 ^ (~b18 & b19);
        a18 = b18 ^ (~b19 & b15);
        a19 = b19 ^ (~b15 & b16);
        a20 = b20 ^ (~b21 & b22);
        a21 = b21 ^ (~b22 & b23);
        a22 = b22 ^ (~b23 & b24);
        a23 = b23 ^ (~b24 & b20);
        a24 = b24 ^ (~b20 & b21);
        a0 ^= keccak_round_constants[round];
    }
    state[0] = a0; state[1] = a1; state[2] = a2; state[3] = a3; state[4] = a4; state[5] = a5; state[6] = a6; state[7] = a7; state[8] = a8; state[9] = a9; state[10] = a10; state[11] = a11; state[12] = a12; state[13] = a13; state[14] = a14; state[15] = a15; state[16] = a16; state[17] = a17; state[18] = a18; state[19] = a19; state[20] = a20; state[21] = a21; state[22] = a22; state[23] = a23; state[24] = a24;
}

static void keccak_absorb_block(uint64_t state[25], const unsigned char *block) {
    for (int i = 0; i < KECCAK256_RATE / 8; i++) {
        uint64_t lane = 0;
        for (int b = 7; b >= 0; b--) lane = (lane << 8) | block[8 * i + b];
        state[i] ^= lane;
    }
    keccak_f1600(state);
}

static void keccak256(const unsigned char *data, size_t length, unsigned char out[32]) {
    uint64_t state[25] = {0};
    unsigned char last[KECCAK256_RATE];
    while (length >= KECCAK256_RATE) {
        keccak_absorb_block(state, data);
        data += KECCAK256_RATE;
        length -= KECCAK256_RATE;
    }
    memset(last, 0, sizeof last);
    memcpy(last, data, length);
    last[length] ^= 0x01; /* Keccak's own padding, not SHA-3's 0x06 */
    last[KECCAK256_RATE - 1] ^= 0x80;
    keccak_absorb_block(state, last);
    for (int i = 0; i < 4; i++)
        for (int b = 0; b < 8; b++) out[8 * i + b] = (unsigned char)(state[i] >> (8 * b));
}

/* ---- libsecp256k1, as coincurve ships it -------------------------------------------------- */

typedef struct { unsigned char data[65]; } recoverable_signature;
typedef struct { unsigned char data[64]; } public_key;
typedef int (*parse_compact_fn)(const void *context, recoverable_signature *signature,
                                const unsigned char *input64, int recovery_id);
typedef int (*recover_fn)(const void *context, public_key *key,
                          const recoverable_signature *signature, const unsigned char *digest32);
typedef int (*serialize_fn)(const void *context, unsigned char *output, size_t *output_length,
                            const public_key *key, unsigned int flags);

static const void *secp_context = NULL;
static parse_compact_fn secp_parse_compact = NULL;
static recover_fn secp_recover = NULL;
static serialize_fn secp_serialize = NULL;
static unsigned int secp_uncompressed_flag = 0;

/* The curve order n and n/2, big-endian: a canonical signature has 0 < r < n, 0 < s <= n/2. */
static const unsigned char curve_order[32] = {
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,
    0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36, 0x41, 0x41};
static const unsigned char half_curve_order[32] = {
    0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x5d, 0x57, 0x6e, 0x73, 0x57, 0xa4, 0x50, 0x1d, 0xdf, 0xe9, 0x2f, 0x46, 0x68, 0x1b, 0x20, 0xa0};
static const unsigned char zero32[32] = {0};

static int is_canonical(const unsigned char signature[65]) {
    unsigned char v = signature[64];
    if (v != 27 && v != 28) return 0;
    if (memcmp(signature, zero32, 32) == 0 || memcmp(signature, curve_order, 32) >= 0) return 0;
    if (memcmp(signature + 32, zero32, 32) == 0) return 0;
    return memcmp(signature + 32, half_curve_order, 32) <= 0;
}

/* The 20-byte address that made a canonical `signature` over `digest`; 0 when none (or when no
 * library is bound). Touches no Python object: callers run it without the interpreter lock. */
static int recover_unlocked(const unsigned char digest[32], const unsigned char signature[65],
                            unsigned char address[20]) {
    recoverable_signature parsed;
    public_key key;
    unsigned char point[65], hashed[32];
    size_t point_length = sizeof point;
    if (secp_recover == NULL) return 0;
    if (secp_parse_compact(secp_context, &parsed, signature, signature[64] - 27) &&
        secp_recover(secp_context, &key, &parsed, digest) &&
        secp_serialize(secp_context, point, &point_length, &key, secp_uncompressed_flag) &&
        point_length == 65 && point[0] == 0x04) {
        keccak256(point + 1, 64, hashed);
        memcpy(address, hashed + 12, 20);
        return 1;
    }
    return 0;
}

/* recover_unlocked with the interpreter lock released around it. */
static int recover_address(const unsigned char digest[32], const unsigned char signature[65],
                           unsigned char address[20]) {
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = recover_unlocked(digest, signature, address);
    Py_END_ALLOW_THREADS
    return ok;
}

/* ---- the objects the Python side hands over once (configure) --------------------------- */

static PyObject *energy_transfer_type = NULL; /* gridpoints_protocol.record.EnergyTransfer */
static PyObject *signed_record_type = NULL;   /* gridpoints_protocol.record.SignedRecord */
static PyObject *user_opening_type = NULL;    /* gridpoints_protocol.commitment.UserOpening */
static PyObject *direction_members[3] = {NULL, NULL, NULL}; /* Direction(1), Direction(2) */
static unsigned char record_typehash[32];
static unsigned char commitment_tag[64];
static Py_ssize_t commitment_tag_length = 0;

/* Interned names: JSON keys, then the attributes the objects get. */
enum {
    K_RECORD, K_SIGNATURE, K_OPENING, K_USER, K_SALT,
    K_STATION_ID, K_SEQUENCE, K_USER_COMMITMENT, K_DIRECTION, K_ENERGY_WH, K_METER_BEFORE_WH,
    K_METER_AFTER_WH, K_START_TIME, K_END_TIME, K_PAYMENT_AUTHORIZATION, K_METER_EVIDENCE,
    A_STATION_ID, A_SEQUENCE, A_USER_COMMITMENT, A_DIRECTION, A_ENERGY_WH, A_METER_BEFORE_WH,
    A_METER_AFTER_WH, A_START_TIME, A_END_TIME, A_PAYMENT_AUTHORIZATION, A_METER_EVIDENCE,
    A_RECORD, A_SIGNATURE, A_USER, A_SALT,
    NAME_COUNT
};
static const char *name_texts[NAME_COUNT] = {
    "record", "signature", "opening", "user", "salt",
    "stationId", "sequence", "userCommitment", "direction", "energyWh", "meterBeforeWh",
    "meterAfterWh", "startTime", "endTime", "paymentAuthorization", "meterEvidence",
    "station_id", "sequence", "user_commitment", "direction", "energy_wh", "meter_before_wh",
    "meter_after_wh", "start_time", "end_time", "payment_authorization", "meter_evidence",
    "record", "signature", "user", "salt",
};
static PyObject *names[NAME_COUNT];

/* ---- canonical-form readers: 1 = read, 0 = not in canonical form (no exception set) ------- */

static int hex_value(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* The ASCII text of an exact str, or NULL. */
static const unsigned char *ascii_of(PyObject *value, Py_ssize_t *length) {
    if (value == NULL || !PyUnicode_CheckExact(value)) return NULL;
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(value) < 0) {
        PyErr_Clear();
        return NULL;
    }
#endif
    if (!PyUnicode_IS_ASCII(value)) return NULL;
    *length = PyUnicode_GET_LENGTH(value);
    return PyUnicode_1BYTE_DATA(value);
}

/* "0x" + 2*size hex digits (either case), as `_fast_hex` reads it. */
static int read_hex(PyObject *value, unsigned char *out, Py_ssize_t size) {
    Py_ssize_t length;
    const unsigned char *text = ascii_of(value, &length);
    if (text == NULL || length != 2 + 2 * size || text[0] != '0' || text[1] != 'x') return 0;
    for (Py_ssize_t i = 0; i < size; i++) {
        int high = hex_value(text[2 + 2 * i]), low = hex_value(text[3 + 2 * i]);
        if (high < 0 || low < 0) return 0;
        out[i] = (unsigned char)(high << 4 | low);
    }
    return 1;
}

/* An exact int in 0..2**64-1 (a bool is not an int here, as `_fast_uint64` says). */
static int read_uint64(PyObject *value, uint64_t *out) {
    if (value == NULL || !PyLong_CheckExact(value)) return 0;
    unsigned long long read = PyLong_AsUnsignedLongLong(value);
    if (read == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    *out = (uint64_t)read;
    return 1;
}

/* An address as `parse_address_text` accepts it: all lower, all upper, or a valid EIP-55
 * checksum. */
static int read_address(PyObject *value, unsigned char out[20]) {
    Py_ssize_t length;
    const unsigned char *text = ascii_of(value, &length);
    int lower = 0, upper = 0;
    if (text == NULL || length != 42 || text[0] != '0' || text[1] != 'x') return 0;
    if (!read_hex(value, out, 20)) return 0;
    for (int i = 2; i < 42; i++) {
        if (text[i] >= 'a' && text[i] <= 'f') lower = 1;
        if (text[i] >= 'A' && text[i] <= 'F') upper = 1;
    }
    if (lower && upper) {
        static const char digits[] = "0123456789abcdef";
        unsigned char plain[40], hashed[32];
        for (int i = 0; i < 20; i++) {
            plain[2 * i] = (unsigned char)digits[out[i] >> 4];
            plain[2 * i + 1] = (unsigned char)digits[out[i] & 15];
        }
        keccak256(plain, 40, hashed);
        for (int i = 0; i < 40; i++) {
            unsigned char c = text[2 + i];
            int nibble = (i % 2 == 0) ? hashed[i / 2] >> 4 : hashed[i / 2] & 15;
            if (c >= 'a' && c <= 'f' && nibble >= 8) return 0;
            if (c >= 'A' && c <= 'F' && nibble < 8) return 0;
        }
    }
    return 1;
}

static void put_uint64_word(unsigned char word[32], uint64_t value) {
    memset(word, 0, 24);
    for (int b = 0; b < 8; b++) word[31 - b] = (unsigned char)(value >> (8 * b));
}

/* ---- check_submission --------------------------------------------------------------------- */

typedef struct {
    unsigned char station_id[32], user_commitment[32], payment_authorization[32];
    unsigned char meter_evidence[32], signature[65], user[20], salt[32];
    uint64_t sequence, energy_wh, meter_before_wh, meter_after_wh, start_time, end_time;
    uint64_t direction;
    /* What check_one works out: the digest, whether the opening opens the commitment, whether
     * the signature is canonical, and (once recovered) the signer. */
    unsigned char digest[32], address[20];
    int opens, canonical, recovered;
} submission;

static PyObject *get(PyObject *dict, int name) {
    return PyDict_GetItemWithError(dict, names[name]); /* borrowed; NULL when absent */
}

/* An exact dict of `size` entries whose keys are all exact str. Only then can a lookup run no
 * Python code (an exact str compares and hashes in C), so that nothing can change or free the
 * dicts while they are read. */
static int plain_dict(PyObject *value, Py_ssize_t size) {
    Py_ssize_t position = 0;
    PyObject *key, *ignored;
    if (value == NULL || !PyDict_CheckExact(value) || PyDict_GET_SIZE(value) != size) return 0;
    while (PyDict_Next(value, &position, &key, &ignored))
        if (!PyUnicode_CheckExact(key)) return 0;
    return 1;
}

static int read_parts(PyObject *item, PyObject *record, PyObject *opening, submission *out);

/* 1: `item` is a submission in canonical form, read into `out`; 0: it is not; -1: error. */
static int read_submission(PyObject *item, submission *out) {
    PyObject *record, *opening;
    int read;
    if (!plain_dict(item, 3)) return 0;
    record = get(item, K_RECORD);
    opening = get(item, K_OPENING);
    if (!plain_dict(record, 11) || !plain_dict(opening, 2)) return PyErr_Occurred() ? -1 : 0;
    /* Held while read (belt and braces: with plain dicts nothing can drop them). */
    Py_INCREF(record);
    Py_INCREF(opening);
    read = read_parts(item, record, opening, out);
    Py_DECREF(record);
    Py_DECREF(opening);
    return read;
}

static int read_parts(PyObject *item, PyObject *record, PyObject *opening, submission *out) {
    if (!read_hex(get(item, K_SIGNATURE), out->signature, 65) ||
        !read_hex(get(record, K_STATION_ID), out->station_id, 32) ||
        !read_hex(get(record, K_USER_COMMITMENT), out->user_commitment, 32) ||
        !read_hex(get(record, K_PAYMENT_AUTHORIZATION), out->payment_authorization, 32) ||
        !read_hex(get(record, K_METER_EVIDENCE), out->meter_evidence, 32) ||
        !read_uint64(get(record, K_SEQUENCE), &out->sequence) ||
        !read_uint64(get(record, K_DIRECTION), &out->direction) ||
        !read_uint64(get(record, K_ENERGY_WH), &out->energy_wh) ||
        !read_uint64(get(record, K_METER_BEFORE_WH), &out->meter_before_wh) ||
        !read_uint64(get(record, K_METER_AFTER_WH), &out->meter_after_wh) ||
        !read_uint64(get(record, K_START_TIME), &out->start_time) ||
        !read_uint64(get(record, K_END_TIME), &out->end_time) ||
        !read_address(get(opening, K_USER), out->user) ||
        !read_hex(get(opening, K_SALT), out->salt, 32))
        return PyErr_Occurred() ? -1 : 0;
    /* The record's rules (record.py's module docstring) and the opening's (no zero address, no
     * zero salt). */
    if (out->sequence == 0 || (out->direction != 1 && out->direction != 2) ||
        out->meter_after_wh < out->meter_before_wh ||
        out->meter_after_wh - out->meter_before_wh != out->energy_wh ||
        out->end_time < out->start_time || memcmp(out->station_id, zero32, 32) == 0 ||
        memcmp(out->user_commitment, zero32, 32) == 0 || memcmp(out->user, zero32, 20) == 0 ||
        memcmp(out->salt, zero32, 32) == 0)
        return 0;
    return 1;
}

/* The record's EIP-712 digest: keccak256(0x1901 || separator || hashStruct(record)). */
static void record_digest(const submission *s, const unsigned char separator[32],
                          unsigned char digest[32]) {
    unsigned char encoded[12 * 32], framed[2 + 32 + 32];
    memcpy(encoded, record_typehash, 32);
    memcpy(encoded + 32, s->station_id, 32);
    put_uint64_word(encoded + 64, s->sequence);
    memcpy(encoded + 96, s->user_commitment, 32);
    put_uint64_word(encoded + 128, s->direction);
    put_uint64_word(encoded + 160, s->energy_wh);
    put_uint64_word(encoded + 192, s->meter_before_wh);
    put_uint64_word(encoded + 224, s->meter_after_wh);
    put_uint64_word(encoded + 256, s->start_time);
    put_uint64_word(encoded + 288, s->end_time);
    memcpy(encoded + 320, s->payment_authorization, 32);
    memcpy(encoded + 352, s->meter_evidence, 32);
    framed[0] = 0x19;
    framed[1] = 0x01;
    memcpy(framed + 2, separator, 32);
    keccak256(encoded, sizeof encoded, framed + 34);
    keccak256(framed, sizeof framed, digest);
}

/* An instance of a frozen slots dataclass, its attributes set as object.__setattr__ would. */
static PyObject *no_arguments = NULL; /* () for object.__new__ */

static PyObject *build(PyObject *type, const int *attributes, PyObject **values, int count) {
    PyObject *instance = PyBaseObject_Type.tp_new((PyTypeObject *)type, no_arguments, NULL);
    if (instance == NULL) return NULL;
    for (int i = 0; i < count; i++) {
        if (values[i] == NULL || PyObject_GenericSetAttr(instance, names[attributes[i]],
                                                         values[i]) < 0) {
            Py_DECREF(instance);
            return NULL;
        }
    }
    return instance;
}

static PyObject *bytes_of(const unsigned char *data, Py_ssize_t size) {
    return PyBytes_FromStringAndSize((const char *)data, size);
}

/* Reads `item` into `s` and works out its digest and opening (1), or says it is not a
 * submission in canonical form (0) or fails (-1). The signer is left to the caller. */
static int check_one(PyObject *item, const unsigned char separator[32], submission *s) {
    unsigned char commitment_input[64 + 20 + 32], commitment[32];
    int read = read_submission(item, s);
    if (read <= 0) return read;
    record_digest(s, separator, s->digest);
    memcpy(commitment_input, commitment_tag, (size_t)commitment_tag_length);
    memcpy(commitment_input + commitment_tag_length, s->user, 20);
    memcpy(commitment_input + commitment_tag_length + 20, s->salt, 32);
    keccak256(commitment_input, (size_t)commitment_tag_length + 52, commitment);
    s->opens = memcmp(commitment, s->user_commitment, 32) == 0;
    s->canonical = is_canonical(s->signature);
    s->recovered = 0;
    return 1;
}

/* (SignedRecord, UserOpening, digest, signer or None, opens) of a checked submission. */
static PyObject *result_of(const submission *s) {
    static const int record_attributes[11] = {
        A_STATION_ID, A_SEQUENCE, A_USER_COMMITMENT, A_DIRECTION, A_ENERGY_WH,
        A_METER_BEFORE_WH, A_METER_AFTER_WH, A_START_TIME, A_END_TIME,
        A_PAYMENT_AUTHORIZATION, A_METER_EVIDENCE};
    static const int signed_attributes[2] = {A_RECORD, A_SIGNATURE};
    static const int opening_attributes[2] = {A_USER, A_SALT};
    PyObject *values[11] = {NULL};
    PyObject *pair[2] = {NULL, NULL};
    PyObject *record = NULL, *signed_record = NULL, *opening = NULL, *signer = NULL;
    PyObject *result = NULL;
    values[0] = bytes_of(s->station_id, 32);
    values[1] = PyLong_FromUnsignedLongLong(s->sequence);
    values[2] = bytes_of(s->user_commitment, 32);
    values[3] = Py_NewRef(direction_members[s->direction]);
    values[4] = PyLong_FromUnsignedLongLong(s->energy_wh);
    values[5] = PyLong_FromUnsignedLongLong(s->meter_before_wh);
    values[6] = PyLong_FromUnsignedLongLong(s->meter_after_wh);
    values[7] = PyLong_FromUnsignedLongLong(s->start_time);
    values[8] = PyLong_FromUnsignedLongLong(s->end_time);
    values[9] = bytes_of(s->payment_authorization, 32);
    values[10] = bytes_of(s->meter_evidence, 32);
    record = build(energy_transfer_type, record_attributes, values, 11);
    if (record == NULL) goto done;
    pair[0] = Py_NewRef(record);
    pair[1] = bytes_of(s->signature, 65);
    signed_record = build(signed_record_type, signed_attributes, pair, 2);
    if (signed_record == NULL) goto done;
    Py_CLEAR(pair[0]);
    Py_CLEAR(pair[1]);
    pair[0] = bytes_of(s->user, 20);
    pair[1] = bytes_of(s->salt, 32);
    opening = build(user_opening_type, opening_attributes, pair, 2);
    if (opening == NULL) goto done;
    signer = s->recovered ? bytes_of(s->address, 20) : Py_NewRef(Py_None);
    if (signer == NULL) goto done;
    result = Py_BuildValue("(OOy#OO)", signed_record, opening, (const char *)s->digest,
                           (Py_ssize_t)32, signer, s->opens ? Py_True : Py_False);
done:
    for (int i = 0; i < 11; i++) Py_XDECREF(values[i]);
    Py_XDECREF(pair[0]);
    Py_XDECREF(pair[1]);
    Py_XDECREF(record);
    Py_XDECREF(signed_record);
    Py_XDECREF(opening);
    Py_XDECREF(signer);
    return result;
}

/* The separator argument (32 bytes, copied) and that configure ran; 0 with an exception. */
static int ready(Py_buffer *separator, unsigned char out[32]) {
    int ok = separator->len == 32;
    if (ok) memcpy(out, separator->buf, 32);
    PyBuffer_Release(separator);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "the domain separator must be 32 bytes");
        return 0;
    }
    if (energy_transfer_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "called before configure");
        return 0;
    }
    return 1;
}

static PyObject *speedups_check_submission(PyObject *module, PyObject *args) {
    PyObject *item;
    Py_buffer separator_buffer;
    unsigned char separator[32];
    submission s;
    int read;
    (void)module;
    if (!PyArg_ParseTuple(args, "Oy*:check_submission", &item, &separator_buffer)) return NULL;
    if (!ready(&separator_buffer, separator)) return NULL;
    read = check_one(item, separator, &s);
    if (read < 0) return NULL;
    if (read == 0) Py_RETURN_NONE;
    s.recovered = s.canonical && recover_address(s.digest, s.signature, s.address);
    return result_of(&s);
}

/* check_submission over a list, the signatures recovered in one stretch without the lock: a
 * batch's threads then take turns at the interpreter lock once per batch, not per record. */
static PyObject *speedups_check_submissions(PyObject *module, PyObject *args) {
    PyObject *items, *snapshot = NULL, *results = NULL;
    Py_buffer separator_buffer;
    unsigned char separator[32];
    submission *checked = NULL;
    char *state = NULL; /* per item: 1 read and checked, 0 not canonical */
    Py_ssize_t count;
    (void)module;
    if (!PyArg_ParseTuple(args, "Oy*:check_submissions", &items, &separator_buffer)) return NULL;
    if (!ready(&separator_buffer, separator)) return NULL;
    /* A tuple of the items holds each of them for the whole call. */
    snapshot = PySequence_Tuple(items);
    if (snapshot == NULL) return NULL;
    count = PyTuple_GET_SIZE(snapshot);
    checked = PyMem_Calloc((size_t)(count > 0 ? count : 1), sizeof(submission));
    state = PyMem_Calloc((size_t)(count > 0 ? count : 1), 1);
    if (checked == NULL || state == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        int read = check_one(PyTuple_GET_ITEM(snapshot, i), separator, &checked[i]);
        if (read < 0) goto done;
        state[i] = (char)read;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++)
        if (state[i] && checked[i].canonical)
            checked[i].recovered =
                recover_unlocked(checked[i].digest, checked[i].signature, checked[i].address);
    Py_END_ALLOW_THREADS
    results = PyList_New(count);
    if (results == NULL) goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *result = state[i] ? result_of(&checked[i]) : Py_NewRef(Py_None);
        if (result == NULL) {
            Py_CLEAR(results);
            goto done;
        }
        PyList_SET_ITEM(results, i, result);
    }
done:
    PyMem_Free(checked);
    PyMem_Free(state);
    Py_DECREF(snapshot);
    return results;
}

/* ---- set-up ------------------------------------------------------------------------------- */

static PyObject *speedups_keccak256(PyObject *module, PyObject *args) {
    Py_buffer data;
    unsigned char out[32];
    (void)module;
    if (!PyArg_ParseTuple(args, "y*:keccak256", &data)) return NULL;
    keccak256((const unsigned char *)data.buf, (size_t)data.len, out);
    PyBuffer_Release(&data);
    return bytes_of(out, 32);
}

static PyObject *speedups_configure(PyObject *module, PyObject *args) {
    PyObject *record_type, *signed_type, *opening_type, *charge, *discharge;
    Py_buffer typehash, tag;
    (void)module;
    if (!PyArg_ParseTuple(args, "OOOOOy*y*:configure", &record_type, &signed_type, &opening_type,
                          &charge, &discharge, &typehash, &tag))
        return NULL;
    if (!PyType_Check(record_type) || !PyType_Check(signed_type) || !PyType_Check(opening_type) ||
        typehash.len != 32 || tag.len > 64) {
        PyBuffer_Release(&typehash);
        PyBuffer_Release(&tag);
        PyErr_SetString(PyExc_ValueError,
                        "configure(EnergyTransfer, SignedRecord, UserOpening, Direction.CHARGE, "
                        "Direction.DISCHARGE, typehash (32 bytes), commitment tag (<= 64 bytes))");
        return NULL;
    }
    Py_XSETREF(energy_transfer_type, Py_NewRef(record_type));
    Py_XSETREF(signed_record_type, Py_NewRef(signed_type));
    Py_XSETREF(user_opening_type, Py_NewRef(opening_type));
    Py_XSETREF(direction_members[1], Py_NewRef(charge));
    Py_XSETREF(direction_members[2], Py_NewRef(discharge));
    memcpy(record_typehash, typehash.buf, 32);
    memcpy(commitment_tag, tag.buf, (size_t)tag.len);
    commitment_tag_length = tag.len;
    PyBuffer_Release(&typehash);
    PyBuffer_Release(&tag);
    Py_RETURN_NONE;
}

static PyObject *speedups_bind_secp256k1(PyObject *module, PyObject *args) {
    unsigned long long context, parse, recover, serialize;
    unsigned int flag;
    (void)module;
    if (!PyArg_ParseTuple(args, "KKKKI:bind_secp256k1", &context, &parse, &recover, &serialize,
                          &flag))
        return NULL;
    if (context == 0 || parse == 0 || recover == 0 || serialize == 0) {
        PyErr_SetString(PyExc_ValueError, "bind_secp256k1: a null address");
        return NULL;
    }
    secp_context = (const void *)(uintptr_t)context;
    secp_parse_compact = (parse_compact_fn)(uintptr_t)parse;
    secp_recover = (recover_fn)(uintptr_t)recover;
    secp_serialize = (serialize_fn)(uintptr_t)serialize;
    secp_uncompressed_flag = flag;
    Py_RETURN_NONE;
}

static PyObject *speedups_recover_address(PyObject *module, PyObject *args) {
    Py_buffer digest, signature;
    unsigned char address[20];
    int ok;
    (void)module;
    unsigned char digest_copy[32], signature_copy[65];
    if (!PyArg_ParseTuple(args, "y*y*:recover_address", &digest, &signature)) return NULL;
    ok = digest.len == 32 && signature.len == 65;
    if (ok) {
        /* Copies: another thread may change a mutable buffer once the lock is released. */
        memcpy(digest_copy, digest.buf, 32);
        memcpy(signature_copy, signature.buf, 65);
    }
    PyBuffer_Release(&digest);
    PyBuffer_Release(&signature);
    if (!ok || !is_canonical(signature_copy) ||
        !recover_address(digest_copy, signature_copy, address))
        Py_RETURN_NONE;
    return bytes_of(address, 20);
}

/* json.loads' object_pairs_hook: the pairs as a dict, or ValueError when a key repeats. */
static PyObject *speedups_object_without_duplicates(PyObject *module, PyObject *pairs) {
    PyObject *result;
    (void)module;
    if (!PyList_CheckExact(pairs)) {
        PyErr_SetString(PyExc_TypeError, "object_without_duplicates takes a list of pairs");
        return NULL;
    }
    result = PyDict_New();
    if (result == NULL) return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(pairs); i++) {
        PyObject *pair = PyList_GET_ITEM(pairs, i);
        int present;
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2) {
            Py_DECREF(result);
            PyErr_SetString(PyExc_TypeError, "object_without_duplicates takes (key, value) pairs");
            return NULL;
        }
        Py_INCREF(pair); /* a key's own __eq__ could change the list */
        present = PyDict_Contains(result, PyTuple_GET_ITEM(pair, 0));
        if (present == 0) {
            present = PyDict_SetItem(result, PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1));
        } else if (present == 1) {
            /* Two values for one field: which one was signed is ambiguous. */
            PyErr_Format(PyExc_ValueError, "key %R appears twice in one object",
                         PyTuple_GET_ITEM(pair, 0));
            present = -1;
        }
        Py_DECREF(pair);
        if (present < 0) {
            Py_DECREF(result);
            return NULL;
        }
    }
    return result;
}

static PyMethodDef speedups_methods[] = {
    {"object_without_duplicates", speedups_object_without_duplicates, METH_O,
     "object_without_duplicates(pairs) -> dict; ValueError when a key appears twice (a "
     "json.loads object_pairs_hook)."},
    {"check_submissions", speedups_check_submissions, METH_VARARGS,
     "check_submissions(items, separator) -> [check_submission(item, separator) for item in "
     "items], the signatures recovered in one stretch without the interpreter lock."},
    {"check_submission", speedups_check_submission, METH_VARARGS,
     "check_submission(item, separator) -> (SignedRecord, UserOpening, digest, signer | None, "
     "opens) for a submission in canonical form, else None."},
    {"recover_address", speedups_recover_address, METH_VARARGS,
     "recover_address(digest, signature) -> the 20-byte signer of a canonical signature, or "
     "None."},
    {"keccak256", speedups_keccak256, METH_VARARGS, "keccak256(data) -> 32 bytes."},
    {"configure", speedups_configure, METH_VARARGS, "Hands over the protocol's classes."},
    {"bind_secp256k1", speedups_bind_secp256k1, METH_VARARGS,
     "bind_secp256k1(context, parse_compact, recover, serialize, uncompressed_flag): addresses "
     "of coincurve's libsecp256k1."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gridpoints_protocol._speedups",
    .m_doc = "The record check's hot path in C (see gridpoints_protocol/fastcheck.py).",
    .m_size = -1,
    .m_methods = speedups_methods,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    for (int i = 0; i < NAME_COUNT; i++) {
        names[i] = PyUnicode_InternFromString(name_texts[i]);
        if (names[i] == NULL) return NULL;
    }
    no_arguments = PyTuple_New(0);
    if (no_arguments == NULL) return NULL;
    return PyModule_Create(&speedups_module);
}
