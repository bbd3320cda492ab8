/* An OpenAI chat completion's token logprobs, read straight from the response bytes.
 *
 * Why: the predictor needs, for the first choice, the chosen token's logprob and its top-k
 * alternatives' logprobs at (at most) 128 positions. Decoding the whole body into Python objects
 * first costs ~2 ms for a 512-token answer with top-5 (every token string, every `bytes` list),
 * and reading the values back out of those dicts ~0.1-0.4 ms more (cache misses). This scanner
 * walks the bytes once, remembers where each logprob number starts, and converts only the
 * positions the feature vector reads to the float32 that float() then np.float32 give (what
 * training sees): a fast path where the result is certain, CPython's correctly rounded parser
 * otherwise. The entries of `logprobs.content` are skimmed first, 64 bytes at a time, for where
 * each one's braces are (skim_content); then only the entries positions(n) names are read, in the
 * usual compact layout from their colons (mask_entry), anything else through a generic walker.
 *
 * The bytes come from another process, so the scanner is its own module, fuzzed (coverage-guided,
 * tests/predictor/serving/fuzz_scanner.py) and run under ASan/UBSan (`make test-sanitizers`).
 * It is deliberately strict: anything outside the expected shape (no choices, a logprob that is
 * not a JSON number or out of a double's range, a repeated or escaped key where it matters,
 * nesting deeper than MAX_DEPTH, a truncated body, bytes after the object, a finish_reason that
 * is not UTF-8, an entry that is not an object) returns None, and the caller decodes the JSON.
 * It never raises on any body.
 *
 * read(body: bytes, k: int, positions: Callable[[int], Sequence[int] | None])
 *   -> (n_tokens, chosen: bytes, top: bytes, finish_reason: str | None, start, end) | None
 * `positions(n)` names the positions to read (None: all n); `chosen` holds m float32 values,
 * `top` m*k float32 values (row-major, -inf where an entry has fewer than k alternatives);
 * [start, end) is the byte span of the choice's "logprobs" value (-1, -1 when the key is absent).
 * Its typed interface is predictor/serving/logprob_scan.py.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define MAX_DEPTH 64

typedef struct {
    const char *p;
    const char *end;
} Cursor;

/* Character classes, one table lookup per byte on the scanning loops. */
enum { WS = 1, NUM = 2, WORD = 4 };
static unsigned char cls[256];

static void init_classes(void) {
    cls[' '] = cls['\n'] = cls['\r'] = cls['\t'] = WS;
    for (int ch = '0'; ch <= '9'; ch++) cls[ch] = NUM;
    cls['-'] = cls['+'] = cls['.'] = cls['e'] = cls['E'] = NUM;
    for (int ch = 'a'; ch <= 'z'; ch++) cls[ch] |= WORD;
}

typedef struct {
    Py_ssize_t *open;   /* offset of each entry's opening brace (skim_content) */
    Py_ssize_t *close;  /* ... and of its closing brace */
    Py_ssize_t *chosen; /* offset of each entry's "logprob" number (entries read only) */
    Py_ssize_t *top;    /* k offsets per entry */
    int *count;         /* alternatives seen per entry (capped at k) */
    Py_ssize_t n, cap;  /* entries skimmed, and room for them */
    Py_ssize_t top_cap; /* room in `top` (offsets) */
    int k;
} Offsets;

static inline void skip_ws(Cursor *c) {
    while (c->p < c->end && (cls[(unsigned char)*c->p] & WS)) c->p++;
}

static int expect(Cursor *c, char ch) {
    skip_ws(c);
    if (c->p >= c->end || *c->p != ch) return 0;
    c->p++;
    return 1;
}

/* The first byte in [p, end) equal to one of a, b, c, d (repeat one to ask for fewer), or `end`.
 * SSE2 compares 16 bytes per step (the structure between logprob numbers is dense, so byte loops
 * dominated the scan); the scalar loop finishes the last bytes and serves where SSE2 is missing. */
static inline __attribute__((always_inline)) const char *find4(const char *p, const char *end, char a, char b, char c, char d) {
#ifdef __SSE2__
    const __m128i va = _mm_set1_epi8(a), vb = _mm_set1_epi8(b), vc = _mm_set1_epi8(c), vd = _mm_set1_epi8(d);
    while (end - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)p);
        __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, va), _mm_cmpeq_epi8(x, vb)), _mm_or_si128(_mm_cmpeq_epi8(x, vc), _mm_cmpeq_epi8(x, vd)));
        int mask = _mm_movemask_epi8(hit);
        if (mask) return p + __builtin_ctz((unsigned)mask);
        p += 16;
    }
#endif
    for (; p < end; p++)
        if (*p == a || *p == b || *p == c || *p == d) return p;
    return end;
}

/* The end of a JSON number: the first byte that cannot be part of one. */
static inline __attribute__((always_inline)) const char *number_end(const char *p, const char *end) {
#ifdef __SSE2__
    const __m128i zero = _mm_set1_epi8('0' - 1), nine = _mm_set1_epi8('9' + 1);
    const __m128i dot = _mm_set1_epi8('.'), minus = _mm_set1_epi8('-'), plus = _mm_set1_epi8('+'), e = _mm_set1_epi8('e'), big_e = _mm_set1_epi8('E');
    while (end - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)p);
        __m128i digit = _mm_and_si128(_mm_cmpgt_epi8(x, zero), _mm_cmplt_epi8(x, nine));
        __m128i sign = _mm_or_si128(_mm_cmpeq_epi8(x, minus), _mm_cmpeq_epi8(x, plus));
        __m128i other = _mm_or_si128(_mm_cmpeq_epi8(x, dot), _mm_or_si128(_mm_cmpeq_epi8(x, e), _mm_cmpeq_epi8(x, big_e)));
        int mask = ~_mm_movemask_epi8(_mm_or_si128(digit, _mm_or_si128(sign, other))) & 0xFFFF;
        if (mask) return p + __builtin_ctz((unsigned)mask);
        p += 16;
    }
#endif
    while (p < end && (cls[(unsigned char)*p] & NUM)) p++;
    return p;
}

/* Inside a string at p: just past its closing quote, or NULL if the body ends first. */
static inline const char *string_end(const char *p, const char *end) {
    for (;;) {
        p = find4(p, end, '"', '\\', '"', '"');
        if (p >= end) return NULL;
        if (*p == '"') return p + 1;
        if (end - p < 2) return NULL; /* a backslash as the last byte: truncated */
        p += 2;                       /* a backslash: the next byte is escaped */
    }
}

/* At an opening quote: move past the closing one. */
static inline int skip_string(Cursor *c) {
    if (c->p >= c->end || *c->p != '"') return 0;
    const char *after = string_end(c->p + 1, c->end);
    if (after == NULL) return 0;
    c->p = after;
    return 1;
}

/* An array of scalars (a token's "bytes"): jump to its end in one pass; 0 when it nests or holds strings. */
static inline int skip_flat_array(Cursor *c) {
    const char *q = find4(c->p + 1, c->end, ']', '"', '[', '{');
    if (q >= c->end || *q != ']') return 0;
    c->p = q + 1;
    return 1;
}

/* Just after an opening bracket: is the container empty? (then the closer is consumed) */
static inline int closes_at_once(Cursor *c, char close) {
    skip_ws(c);
    if (c->p < c->end && *c->p == close) {
        c->p++;
        return 1;
    }
    return 0;
}

/* After a member or element: 1 a comma (another follows), 0 the closer (consumed), -1 malformed. */
static inline int next_item(Cursor *c, char close) {
    skip_ws(c);
    if (c->p >= c->end) return -1;
    if (*c->p == ',') {
        c->p++;
        return 1;
    }
    if (*c->p == close) {
        c->p++;
        return 0;
    }
    return -1;
}

static int skip_value(Cursor *c, int depth);

static int skip_container(Cursor *c, char close, int is_object, int depth) {
    if (depth > MAX_DEPTH) return 0;
    c->p++;
    if (closes_at_once(c, close)) return 1;
    for (;;) {
        if (is_object) {
            skip_ws(c);
            if (!skip_string(c) || !expect(c, ':')) return 0;
        }
        if (!skip_value(c, depth + 1)) return 0;
        int more = next_item(c, close);
        if (more < 0) return 0;
        if (!more) return 1;
    }
}

static int skip_value(Cursor *c, int depth) {
    skip_ws(c);
    if (c->p >= c->end) return 0;
    switch (*c->p) {
    case '"':
        return skip_string(c);
    case '{':
        return skip_container(c, '}', 1, depth);
    case '[':
        return skip_flat_array(c) || skip_container(c, ']', 0, depth);
    default: {
        const char *start = c->p;
        while (c->p < c->end && (cls[(unsigned char)*c->p] & (NUM | WORD))) c->p++;
        return c->p > start;
    }
    }
}

/* At an object key: where its text is. Keys are compared byte for byte, so a key spelled with an
 * escape ("logprob\u0073" is "logprobs" to a decoder) is declined rather than misread. */
static inline int read_key(Cursor *c, const char **key, Py_ssize_t *len) {
    skip_ws(c);
    const char *start = c->p + 1;
    if (!skip_string(c)) return 0;
    *key = start;
    *len = (c->p - 1) - start;
    if (memchr(start, '\\', (size_t)*len) != NULL) return 0;
    return expect(c, ':');
}

#define KEY_IS(key, len, lit) ((len) == (Py_ssize_t)(sizeof(lit) - 1) && memcmp((key), (lit), sizeof(lit) - 1) == 0)

/* Iterate an object's members: calls `on_member` at each value; it must consume the value. */
typedef int (*MemberFn)(Cursor *c, const char *key, Py_ssize_t len, void *ctx);

static inline __attribute__((always_inline)) int walk_object(Cursor *c, MemberFn on_member, void *ctx) {
    if (!expect(c, '{')) return 0;
    if (closes_at_once(c, '}')) return 1;
    for (;;) {
        const char *key;
        Py_ssize_t len;
        if (!read_key(c, &key, &len)) return 0;
        skip_ws(c);
        if (!on_member(c, key, len, ctx)) return 0;
        int more = next_item(c, '}');
        if (more < 0) return 0;
        if (!more) return 1;
    }
}

static inline int is_null(Cursor *c) {
    skip_ws(c);
    if (c->end - c->p >= 4 && memcmp(c->p, "null", 4) == 0) {
        c->p += 4;
        return 1;
    }
    return 0;
}

/* A JSON number starts here: remember where, move past it. */
static inline int number_at(Cursor *c, Py_ssize_t *offset, const char *base) {
    skip_ws(c);
    if (c->p >= c->end || !(*c->p == '-' || (*c->p >= '0' && *c->p <= '9'))) return 0;
    *offset = c->p - base;
    c->p = number_end(c->p, c->end);
    return 1;
}

typedef struct {
    Offsets *off;
    const char *base;
    Py_ssize_t *slot; /* where an alternative's "logprob" offset goes */
    int seen_logprob;
} EntryCtx;

static inline int on_alternative(Cursor *c, const char *key, Py_ssize_t len, void *ctx) {
    EntryCtx *e = ctx;
    if (KEY_IS(key, len, "logprob")) {
        if (e->slot == NULL) return skip_value(c, 0);
        if (!number_at(c, e->slot, e->base)) return 0;
        e->seen_logprob = 1;
        return 1;
    }
    return skip_value(c, 0);
}

static int on_entry(Cursor *c, const char *key, Py_ssize_t len, void *ctx) {
    EntryCtx *e = ctx;
    Offsets *o = e->off;
    Py_ssize_t i = o->n;
    if (KEY_IS(key, len, "logprob")) {
        if (!number_at(c, &o->chosen[i], e->base)) return 0;
        e->seen_logprob = 1;
        return 1;
    }
    if (KEY_IS(key, len, "top_logprobs")) {
        o->count[i] = 0;
        if (is_null(c)) return 1;
        if (!expect(c, '[')) return 0;
        if (closes_at_once(c, ']')) return 1;
        for (;;) {
            EntryCtx alt = {o, e->base, o->count[i] < o->k ? &o->top[i * o->k + o->count[i]] : NULL, 0};
            if (!walk_object(c, on_alternative, &alt)) return 0;
            if (alt.slot != NULL) {
                if (!alt.seen_logprob) return 0;
                o->count[i]++;
            }
            int more = next_item(c, ']');
            if (more < 0) return 0;
            if (!more) return 1;
        }
    }
    return skip_value(c, 0);
}

/* Room for `cap` entries in every array (realloc keeps what they hold). */
static int reserve(Offsets *o, Py_ssize_t cap) {
    if (o->cap < cap) {
        Py_ssize_t *open = PyMem_Realloc(o->open, (size_t)cap * sizeof(Py_ssize_t));
        if (open == NULL) return 0;
        o->open = open;
        Py_ssize_t *close = PyMem_Realloc(o->close, (size_t)cap * sizeof(Py_ssize_t));
        if (close == NULL) return 0;
        o->close = close;
        Py_ssize_t *chosen = PyMem_Realloc(o->chosen, (size_t)cap * sizeof(Py_ssize_t));
        if (chosen == NULL) return 0;
        o->chosen = chosen;
        int *count = PyMem_Realloc(o->count, (size_t)cap * sizeof(int));
        if (count == NULL) return 0;
        o->count = count;
        o->cap = cap;
    }
    if (o->top_cap < cap * o->k) {
        Py_ssize_t *top = PyMem_Realloc(o->top, (size_t)cap * (size_t)o->k * sizeof(Py_ssize_t));
        if (top == NULL) return 0;
        o->top = top;
        o->top_cap = cap * o->k;
    }
    return 1;
}

static int grow(Offsets *o) { return reserve(o, o->cap ? o->cap * 2 : 256); }

/* The arrays of the last call, kept for the next (a malloc and a free of each cost ~5 % of reading a
 * short answer). The GIL serialises calls; one made from inside another (positions() may run any
 * code) finds them taken and allocates its own. Arrays grown past SPARE_MAX entries are freed. */
#define SPARE_MAX 4096
static Offsets spare;
static int spare_taken;

/* The layout vLLM and our llama.cpp server both write, compact:
 *   {"token":"..","logprob":N,"bytes":[..],"top_logprobs":[{"token":"..","logprob":N,"bytes":[..]},..]}
 * matched literally, a few comparisons per object instead of parsing every key (2-3x faster on
 * long answers). Anything else -- whitespace, another key order, extra keys, escapes that are
 * not plain -- returns 0 with nothing recorded, and the entry is parsed generically. */
#define LIT(s) s, sizeof(s) - 1

static inline uint64_t load8(const char *p) {
    uint64_t v;
    memcpy(&v, p, 8); /* one unaligned load; with a literal it folds to a constant */
    return v;
}

/* Consume the literal `lit` (n <= 24 bytes) at *p: two or three overlapping 8-byte compares (a
 * memcmp call, then a byte loop, were 17 % and 25 % of the scan). */
static inline __attribute__((always_inline)) int take(const char **p, const char *end, const char *lit, size_t n) {
    const char *q = *p;
    if ((size_t)(end - q) < n) return 0;
    if (n >= 8) {
        if (load8(q) != load8(lit) || load8(q + n - 8) != load8(lit + n - 8)) return 0;
        if (n > 16 && load8(q + 8) != load8(lit + 8)) return 0;
    } else {
        for (size_t i = 0; i < n; i++)
            if (q[i] != lit[i]) return 0;
    }
    *p = q + n;
    return 1;
}

/* {"token":"..","logprob":N,"bytes":[..] -- leaves *p after the bytes array; *num at N. */
static inline __attribute__((always_inline)) int fast_token(const char **p, const char *end, const char **num) {
    const char *q = *p;
    if (!take(&q, end, LIT("{\"token\":\"")) || (q = string_end(q, end)) == NULL) return 0;
    if (!take(&q, end, LIT(",\"logprob\":"))) return 0;
    if (q >= end || !(*q == '-' || (*q >= '0' && *q <= '9'))) return 0;
    *num = q;
    q = number_end(q, end);
    if (!take(&q, end, LIT(",\"bytes\":["))) return 0;
    q = find4(q, end, ']', '"', '[', '{');
    if (q >= end || *q != ']') return 0;
    *p = q + 1;
    return 1;
}

static int fast_entry(Cursor *c, Offsets *o, const char *base) {
    const char *q = c->p, *end = c->end, *num;
    Py_ssize_t i = o->n;
    if (!fast_token(&q, end, &num)) return 0;
    Py_ssize_t chosen = num - base;
    if (!take(&q, end, LIT(",\"top_logprobs\":["))) return 0;
    int count = 0;
    if (!take(&q, end, LIT("]"))) {
        do {
            if (!fast_token(&q, end, &num) || !take(&q, end, LIT("}"))) return 0;
            if (count < o->k) o->top[i * o->k + count++] = num - base;
        } while (take(&q, end, LIT(",")));
        if (!take(&q, end, LIT("]"))) return 0;
    }
    if (!take(&q, end, LIT("}"))) return 0;
    o->chosen[i] = chosen;
    o->count[i] = count;
    c->p = q;
    return 1;
}

/* -- Skimming the entries, reading those wanted ---------------------------------------------------
 *
 * An answer longer than the feature vector's MAX_POSITIONS (predictor/serving/features.py) is read
 * at 128 of its positions, yet walking every entry key by key (a dozen short searches each, each
 * starting where the last ended: ~1 cycle a byte) cost as much for the entries not read. So the
 * entries are first only skimmed, for where each one's braces are, 64 bytes at a time the way
 * simdjson's first stage finds structure: bit masks of the quotes, backslashes and braces, the
 * escaped quotes dropped, a prefix XOR of the quotes marking what lies inside strings; the braces
 * outside strings are then walked bit by bit for the depth, and the many blocks that lie inside one
 * entry all along are passed by a popcount. Between two entries only a comma and whitespace may
 * stand (checked byte by byte), so the content array's own brackets are the only ones that matter.
 * Once positions(n) is known, only the entries it names are read, each within the span skimmed for
 * it, which it must fill exactly: in the compact layout from its colons (mask_entry, found the same
 * way), otherwise as before (read_skimmed: fast_entry, then the generic walker). An entry the skim
 * passes over is not checked beyond its braces: decoding reads only the same positions
 * (AnswerStats.from_choice), so a body that decodes is read the same, and one that does not may be
 * accepted (the router's decode of the rest of the body finds out, as for the strings the scanner
 * never checks). Every entry of a short answer is skimmed, then read: that too costs less than
 * walking it did (bench/predictor_latency.py). */
typedef struct {
    uint64_t quote, backslash, open, close; /* bit i: byte i of the 64 is '"', '\\', '{', '}' */
} Block;

typedef struct {
    uint64_t quote, backslash, colon; /* for reading a skimmed entry (mask_entry) */
} ColonBlock;

typedef struct {
    const char *base, *end;
    const char *next_open; /* where the next entry's '{' is (checked when its bit comes) */
    Offsets *o;
    Py_ssize_t depth;      /* of braces: 0 between entries */
    uint64_t escape_carry; /* the next block's first byte is escaped */
    uint64_t in_string;    /* all ones: the next block starts inside a string */
} Skim;

/* The bytes escaped by a backslash (the one after an odd-length run of them); *carry: the first byte
 * of the next block is. simdjson's branchless method: an add's carry chain tells runs starting on
 * even bits from runs starting on odd ones. */
static inline __attribute__((always_inline)) uint64_t escaped_bytes(uint64_t backslash, uint64_t *carry) {
    const uint64_t even = 0x5555555555555555ULL;
    backslash &= ~*carry; /* an escaped backslash escapes nothing */
    uint64_t follows = (backslash << 1) | *carry;
    uint64_t odd_starts = backslash & ~even & ~follows;
    uint64_t sum;
    *carry = __builtin_add_overflow(odd_starts, backslash, &sum);
    return (even ^ (sum << 1)) & follows;
}

/* Inclusive prefix XOR: bit i is the parity of bits 0..i (inside a string from its opening quote on). */
static inline __attribute__((always_inline)) uint64_t prefix_xor(uint64_t x) {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    return x;
}

static inline const char *past_ws(const char *p, const char *end) {
    while (p < end && (cls[(unsigned char)*p] & WS)) p++;
    return p;
}

/* After an entry's closing brace at q: ", {" (the next entry's brace noted) or "]" (the array's end,
 * *done set). 0: anything else. */
static int after_entry(Skim *s, const char *q, int *done) {
    const char *r = past_ws(q + 1, s->end);
    if (r < s->end && *r == ']') {
        s->next_open = r + 1; /* where the cursor goes on */
        *done = 1;
        return 1;
    }
    if (r >= s->end || *r != ',') return 0;
    r = past_ws(r + 1, s->end);
    if (r >= s->end || *r != '{') return 0;
    s->next_open = r;
    return 1;
}

/* One block's braces, at p: 1 go on, 0 decline, 2 the array ended. */
static inline __attribute__((always_inline)) int skim_block(Skim *s, const Block *b, const char *p, uint64_t (*xor_fn)(uint64_t)) {
    uint64_t quote = b->quote;
    if (b->backslash | s->escape_carry) quote &= ~escaped_bytes(b->backslash, &s->escape_carry);
    uint64_t in_string = xor_fn(quote) ^ s->in_string;
    s->in_string = (uint64_t)((int64_t)in_string >> 63);
    uint64_t open = b->open & ~in_string, close = b->close & ~in_string;
    Py_ssize_t depth = s->depth, closes = __builtin_popcountll(close);
    if (depth - closes > 0) { /* the depth stays above 0: inside one entry all along (most blocks) */
        s->depth = depth + __builtin_popcountll(open) - closes;
        return 1;
    }
    uint64_t braces = open | close;
    while (braces) {
        int i = __builtin_ctzll(braces);
        braces &= braces - 1;
        int opens = (int)((open >> i) & 1);
        depth += 2 * opens - 1;
        if (depth - opens > 0) continue; /* inside an entry */
        const char *q = p + i;
        Offsets *o = s->o;
        if (opens) { /* 0 -> 1: an entry starts, where the bytes after the last one said */
            if (q != s->next_open) return 0;
            if (o->n == o->cap && !grow(o)) return 0;
            o->open[o->n] = q - s->base;
        } else { /* 1 -> 0: it ends */
            if (depth < 0) return 0;
            o->close[o->n++] = q - s->base;
            int done = 0;
            if (!after_entry(s, q, &done)) return 0;
            if (done) return 2;
        }
    }
    s->depth = depth;
    return 1;
}

static inline __attribute__((always_inline)) uint64_t xor_shifts(uint64_t x) { return prefix_xor(x); }

#if defined(__SSE2__)
static inline __attribute__((always_inline)) uint64_t mask16(__m128i x, char ch) {
    return (uint64_t)(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(x, _mm_set1_epi8(ch)));
}

static inline __attribute__((always_inline)) void classify(const char *p, Block *b) {
    __m128i x0 = _mm_loadu_si128((const __m128i *)p), x1 = _mm_loadu_si128((const __m128i *)(p + 16));
    __m128i x2 = _mm_loadu_si128((const __m128i *)(p + 32)), x3 = _mm_loadu_si128((const __m128i *)(p + 48));
#define MASK64(ch) (mask16(x0, ch) | mask16(x1, ch) << 16 | mask16(x2, ch) << 32 | mask16(x3, ch) << 48)
    b->quote = MASK64('"');
    b->backslash = MASK64('\\');
    b->open = MASK64('{');
    b->close = MASK64('}');
#undef MASK64
}

static inline __attribute__((always_inline)) void classify_colons(const char *p, ColonBlock *b) {
    __m128i x0 = _mm_loadu_si128((const __m128i *)p), x1 = _mm_loadu_si128((const __m128i *)(p + 16));
    __m128i x2 = _mm_loadu_si128((const __m128i *)(p + 32)), x3 = _mm_loadu_si128((const __m128i *)(p + 48));
#define MASK64(ch) (mask16(x0, ch) | mask16(x1, ch) << 16 | mask16(x2, ch) << 32 | mask16(x3, ch) << 48)
    b->quote = MASK64('"');
    b->backslash = MASK64('\\');
    b->colon = MASK64(':');
#undef MASK64
}
#else
static inline void classify_colons(const char *p, ColonBlock *b) {
    b->quote = b->backslash = b->colon = 0;
    for (int i = 0; i < 64; i++) {
        unsigned char ch = (unsigned char)p[i];
        b->quote |= (uint64_t)(ch == '"') << i;
        b->backslash |= (uint64_t)(ch == '\\') << i;
        b->colon |= (uint64_t)(ch == ':') << i;
    }
}

static inline void classify(const char *p, Block *b) { /* portable: compilers vectorise the byte loop */
    b->quote = b->backslash = b->open = b->close = 0;
    for (int i = 0; i < 64; i++) {
        unsigned char ch = (unsigned char)p[i];
        b->quote |= (uint64_t)(ch == '"') << i;
        b->backslash |= (uint64_t)(ch == '\\') << i;
        b->open |= (uint64_t)(ch == '{') << i;
        b->close |= (uint64_t)(ch == '}') << i;
    }
}
#endif

/* The block loop, for each instruction set: the last bytes are copied into a block padded with
 * spaces (nothing to any mask). 1: skimmed to the array's end (s->next_open just past it). */
#define SKIM_LOOP(classify_fn, xor_fn)                                                                                                  \
    for (const char *p = start; p < s->end; p += 64) {                                                                                 \
        Block b;                                                                                                                        \
        if (s->end - p >= 64) {                                                                                                         \
            classify_fn(p, &b);                                                                                                         \
        } else {                                                                                                                        \
            char tail[64];                                                                                                              \
            memset(tail, ' ', sizeof tail);                                                                                             \
            memcpy(tail, p, (size_t)(s->end - p));                                                                                      \
            classify_fn(tail, &b);                                                                                                      \
        }                                                                                                                               \
        int more = skim_block(s, &b, p, xor_fn);                                                                                        \
        if (more != 1) return more == 2;                                                                                                \
    }                                                                                                                                   \
    return 0;

static int skim_portable(Skim *s, const char *start) { SKIM_LOOP(classify, xor_shifts) }

/* The colons outside strings in the entry [s, s + len), as offsets from s into at[]: how many, or -1
 * (more than MAX_COLONS, or an entry longer than MAX_ENTRY bytes: read the usual way then). A block
 * reaching past the entry is read where the body goes on (its bits past the entry dropped), and
 * copied, padded, only at the body's end. */
#define MAX_COLONS 64
#define MAX_ENTRY 2048
#define COLONS_LOOP(classify_fn, xor_fn)                                                                                                \
    uint64_t escape_carry = 0, in_string_carry = 0;                                                                                     \
    int nc = 0;                                                                                                                         \
    if (len > MAX_ENTRY) return -1;                                                                                                     \
    for (Py_ssize_t off = 0; off < len; off += 64) {                                                                                    \
        ColonBlock b;                                                                                                                   \
        if (limit - (s + off) >= 64) {                                                                                                  \
            classify_fn(s + off, &b);                                                                                                   \
        } else {                                                                                                                        \
            char tail[64];                                                                                                              \
            memset(tail, ' ', sizeof tail);                                                                                             \
            memcpy(tail, s + off, (size_t)(limit - (s + off)));                                                                         \
            classify_fn(tail, &b);                                                                                                      \
        }                                                                                                                               \
        uint64_t quote = b.quote;                                                                                                       \
        if (b.backslash | escape_carry) quote &= ~escaped_bytes(b.backslash, &escape_carry);                                            \
        uint64_t in_string = xor_fn(quote) ^ in_string_carry;                                                                           \
        in_string_carry = (uint64_t)((int64_t)in_string >> 63);                                                                         \
        uint64_t colon = b.colon & ~in_string;                                                                                          \
        if (len - off < 64) colon &= (1ULL << (len - off)) - 1;                                                                         \
        for (; colon; colon &= colon - 1) {                                                                                             \
            if (nc == MAX_COLONS) return -1;                                                                                            \
            at[nc++] = (uint16_t)(off + __builtin_ctzll(colon));                                                                        \
        }                                                                                                                               \
    }                                                                                                                                   \
    return nc;

static int colons_portable(const char *s, Py_ssize_t len, const char *limit, uint16_t *at) { COLONS_LOOP(classify_colons, xor_shifts) }

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_AVX2_VARIANT 1
/* AVX2 (two 32-byte compares per mask), PCLMUL (the prefix XOR as one carry-less multiply by all
 * ones) and POPCNT, for the CPUs that have them (checked at import): the build itself stays portable. */
#define WIDE __attribute__((target("avx2,pclmul,popcnt")))

static inline __attribute__((always_inline)) WIDE uint64_t mask32(__m256i x, char ch) {
    return (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(x, _mm256_set1_epi8(ch)));
}

static inline __attribute__((always_inline)) WIDE void classify_avx2(const char *p, Block *b) {
    __m256i lo = _mm256_loadu_si256((const __m256i *)p), hi = _mm256_loadu_si256((const __m256i *)(p + 32));
    b->quote = mask32(lo, '"') | mask32(hi, '"') << 32;
    b->backslash = mask32(lo, '\\') | mask32(hi, '\\') << 32;
    b->open = mask32(lo, '{') | mask32(hi, '{') << 32;
    b->close = mask32(lo, '}') | mask32(hi, '}') << 32;
    /* Leave no 256-bit state behind, here where the masks are done: with the upper halves dirty, every
     * SSE instruction after (in the rest of this scan, libm's exp, numpy, onnxruntime) pays for a merge,
     * and the compiler's own vzeroupper missed a way out of the loop (answer_stats ran 12x slower). */
    _mm256_zeroupper();
}

static inline __attribute__((always_inline)) WIDE uint64_t xor_clmul(uint64_t x) {
    return (uint64_t)_mm_cvtsi128_si64(_mm_clmulepi64_si128(_mm_set_epi64x(0, (long long)x), _mm_set1_epi8((char)0xFF), 0));
}

static WIDE int skim_avx2(Skim *s, const char *start) { SKIM_LOOP(classify_avx2, xor_clmul) }

static inline __attribute__((always_inline)) WIDE void classify_colons_avx2(const char *p, ColonBlock *b) {
    __m256i lo = _mm256_loadu_si256((const __m256i *)p), hi = _mm256_loadu_si256((const __m256i *)(p + 32));
    b->quote = mask32(lo, '"') | mask32(hi, '"') << 32;
    b->backslash = mask32(lo, '\\') | mask32(hi, '\\') << 32;
    b->colon = mask32(lo, ':') | mask32(hi, ':') << 32;
    _mm256_zeroupper(); /* as in classify_avx2 */
}

static WIDE int colons_avx2(const char *s, Py_ssize_t len, const char *limit, uint16_t *at) { COLONS_LOOP(classify_colons_avx2, xor_clmul) }
#endif

static int use_avx2; /* set at import */

/* Just inside the content array (not empty): every entry's braces, and past the array's end. */
static int skim_content(Cursor *c, Offsets *o, const char *base) {
    const char *p = past_ws(c->p, c->end);
    if (p >= c->end || *p != '{') return 0;
    Skim s = {base, c->end, p, o, 0, 0, 0};
#ifdef HAVE_AVX2_VARIANT
    int ok = use_avx2 ? skim_avx2(&s, p) : skim_portable(&s, p);
#else
    int ok = skim_portable(&s, p);
#endif
    if (!ok) return 0;
    c->p = s.next_open;
    return 1;
}

/* Bytes equal to the literal `lit` at p (n <= 24; no bounds: the caller's offsets are inside the entry). */
static inline __attribute__((always_inline)) int matches(const char *p, const char *lit, size_t n) {
    const char *q = p;
    return take(&q, q + n, lit, n);
}

static inline int starts_number(char ch) { return ch == '-' || (ch >= '0' && ch <= '9'); }

/* A skimmed entry in the layout fast_entry reads, from its colons instead of a chain of searches (each
 * starting where the last ended: ~50 cycles of latency a token): the colons outside strings are found
 * 64 bytes at a time, as the skim finds braces, and each must be preceded by the key, and the byte
 * before the key, that the layout puts there. In JSON that decodes a colon outside strings follows a
 * key, and every member has one, so those checks pin the structure down: the entry holds exactly
 * token, logprob, bytes, top_logprobs, and top_logprobs holds only objects of token, logprob, bytes,
 * whose logprob numbers start just past their colons (parse_number reads them later). A bytes value
 * is not looked into (nothing reads it; an object in it would show by its colons). 0: not in this
 * layout (or too long): read_skimmed reads the entry instead. */
#define ENDS_WITH(at, lit) ((at) + 1 >= (Py_ssize_t)sizeof(lit) - 1 && matches(s + (at) + 1 - (sizeof(lit) - 1), LIT(lit)))
static int mask_entry(Offsets *o, const char *base, const char *limit, Py_ssize_t i) {
    const char *s = base + o->open[i];
    Py_ssize_t len = o->close[i] + 1 - o->open[i];
    if (len < 10 || !matches(s, LIT("{\"token\":\""))) return 0; /* another layout: known before finding its colons */
    uint16_t at[MAX_COLONS];
#ifdef HAVE_AVX2_VARIANT
    int nc = use_avx2 ? colons_avx2(s, len, limit, at) : colons_portable(s, len, limit, at);
#else
    int nc = colons_portable(s, len, limit, at);
#endif
    if (nc < 4 || (nc - 4) % 3 != 0) return 0;
    Py_ssize_t c0 = at[0], c1 = at[1], c2 = at[2], c3 = at[3]; /* token, logprob, bytes, top_logprobs */
    if (c0 != 8) return 0; /* {"token":" matched above */
    if (c1 - 11 < c0 + 2 || !ENDS_WITH(c1, "\",\"logprob\":") || !starts_number(s[c1 + 1])) return 0;
    if (c2 - 8 <= c1 + 1 || !ENDS_WITH(c2, ",\"bytes\":") || s[c2 + 1] != '[') return 0;
    if (c3 - 16 < c2 + 2 || !ENDS_WITH(c3, "],\"top_logprobs\":") || s[c3 + 1] != '[') return 0;
    int count = (nc - 4) / 3, k = o->k;
    Py_ssize_t open = o->open[i], *top = o->top + i * k;
    if (count == 0) {
        if (len != c3 + 4 || s[c3 + 2] != ']') return 0; /* "top_logprobs":[]} */
    } else {
        Py_ssize_t prev = c3;
        for (int j = 0; j < count; j++) {
            Py_ssize_t t = at[4 + 3 * j], l = at[5 + 3 * j], b = at[6 + 3 * j]; /* its token, logprob, bytes */
            if (j == 0 ? t - 9 != c3 + 1 || !ENDS_WITH(t, "[{\"token\":") : t - 11 < prev + 2 || !ENDS_WITH(t, "]},{\"token\":")) return 0;
            if (s[t + 1] != '"' || l - 11 < t + 2 || !ENDS_WITH(l, "\",\"logprob\":") || !starts_number(s[l + 1])) return 0;
            if (b - 8 <= l + 1 || !ENDS_WITH(b, ",\"bytes\":") || s[b + 1] != '[') return 0;
            if (j < k) top[j] = open + l + 1;
            prev = b;
        }
        if (len - 4 < prev + 2 || !matches(s + len - 4, LIT("]}]}"))) return 0;
    }
    o->chosen[i] = open + c1 + 1;
    o->count[i] = count < k ? count : k;
    return 1;
}
#undef ENDS_WITH

/* A skimmed entry that positions(n) names, read as entries are (fast_entry, or generically): it must
 * end exactly at the brace the skim found. */
static int read_skimmed(Offsets *o, const char *base, Py_ssize_t i) {
    Cursor c = {base + o->open[i], base + o->close[i] + 1};
    Py_ssize_t n = o->n;
    o->n = i; /* the entry readers fill row o->n */
    o->count[i] = 0;
    int ok = fast_entry(&c, o, base);
    if (!ok) {
        EntryCtx e = {o, base, NULL, 0};
        ok = walk_object(&c, on_entry, &e) && e.seen_logprob;
    }
    o->n = n;
    return ok && c.p == c.end;
}

static int read_content(Cursor *c, Offsets *o, const char *base) {
    if (is_null(c)) return 1;
    if (!expect(c, '[')) return 0;
    if (closes_at_once(c, ']')) return 1;
    return skim_content(c, o, base);
}

typedef struct {
    Offsets *off;
    const char *base;
    Py_ssize_t start, end;       /* span of the "logprobs" value */
    const char *finish;          /* finish_reason string (without quotes), NULL if null/absent */
    Py_ssize_t finish_len;
    int finish_refused;          /* finish_reason escaped or with a control byte: declined */
    int seen_choice, seen_content;
} ChoiceCtx;

/* A key seen twice is declined where it matters: a decoder keeps the last, this scan the first. */
static int on_logprobs(Cursor *c, const char *key, Py_ssize_t len, void *ctx) {
    ChoiceCtx *ch = ctx;
    if (KEY_IS(key, len, "content")) {
        if (ch->seen_content) return 0;
        ch->seen_content = 1;
        return read_content(c, ch->off, ch->base);
    }
    return skip_value(c, 0);
}

static int on_choice(Cursor *c, const char *key, Py_ssize_t len, void *ctx) {
    ChoiceCtx *ch = ctx;
    if (KEY_IS(key, len, "logprobs")) {
        if (ch->start >= 0) return 0;
        ch->start = c->p - ch->base;
        if (is_null(c)) {
            ch->end = c->p - ch->base;
            return 1;
        }
        if (!walk_object(c, on_logprobs, ch)) return 0;
        ch->end = c->p - ch->base;
        return 1;
    }
    if (KEY_IS(key, len, "finish_reason")) {
        ch->finish = NULL;
        ch->finish_refused = 0;
        if (is_null(c)) return 1;
        const char *start = c->p + 1;
        if (!skip_string(c)) return 0;
        ch->finish = start;
        ch->finish_len = (c->p - 1) - start;
        for (Py_ssize_t j = 0; j < ch->finish_len; j++) /* an escape (not decoded here), or a raw control byte (JSON has none) */
            ch->finish_refused |= start[j] == '\\' || (unsigned char)start[j] < 0x20;
        return 1;
    }
    return skip_value(c, 0);
}

static int on_completion(Cursor *c, const char *key, Py_ssize_t len, void *ctx) {
    ChoiceCtx *ch = ctx;
    if (KEY_IS(key, len, "choices")) {
        if (ch->seen_choice || !expect(c, '[') || !walk_object(c, on_choice, ch)) return 0;
        ch->seen_choice = 1; /* the first choice is what the predictor reads; skip any others */
        for (;;) {
            int more = next_item(c, ']');
            if (more < 0) return 0;
            if (!more) return 1;
            if (!skip_value(c, 0)) return 0;
        }
    }
    return skip_value(c, 0);
}

static const double NEG_POW10[] = {1e0,   1e-1,  1e-2,  1e-3,  1e-4,  1e-5,  1e-6,  1e-7,  1e-8,  1e-9,  1e-10, 1e-11,
                                    1e-12, 1e-13, 1e-14, 1e-15, 1e-16, 1e-17, 1e-18, 1e-19, 1e-20, 1e-21, 1e-22};
static const double POW10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* Eight ASCII digits at p?  And their value (SWAR: three multiplies instead of eight steps). */
static inline int eight_digits(const char *p) {
    uint64_t v = load8(p);
    return ((v & 0xF0F0F0F0F0F0F0F0ULL) | (((v + 0x0606060606060606ULL) & 0xF0F0F0F0F0F0F0F0ULL) >> 4)) == 0x3333333333333333ULL;
}

static inline uint64_t eight_value(const char *p) {
    uint64_t v = (load8(p) & 0x0F0F0F0F0F0F0F0FULL);
    v = (v * 2561) >> 8;
    v = ((v & 0x00FF00FF00FF00FFULL) * 6553601) >> 16;
    return ((v & 0x0000FFFF0000FFFFULL) * 42949672960001ULL) >> 32;
}

/* The float32 that decoding the JSON number at base + offset and then np.float32 give (what
 * training sees): the float32 nearest to the double nearest to it. 0 (decline) when the bytes
 * number_end() took for it are not one JSON number -- "1.5.5", "-1-2", "01", "1.", "-", "1e+"
 * (float() is laxer than JSON, and a decoder refuses those) -- or when it is beyond a double's
 * range (orjson refuses 1e400 rather than give inf). An integer -0 is 0 (a decoder gives int 0).
 * Fast path: the decimal significand (<= 19 digits) times a power of ten, within 2 double ulps of
 * the true value; when that whole error band rounds to one float32 (all but ~1 in 10^8 numbers)
 * it is the answer. Otherwise CPython's correctly rounded parser decides. The body's bytes object
 * ends in a NUL, which stops every digit loop at `limit` at the latest. */
static int parse_number(const char *base, const char *limit, Py_ssize_t offset, float *out) {
    const char *s = base + offset, *p = s;
    int negative = *p == '-';
    p += negative;
    const char *int_start = p;
    uint64_t sig = 0; /* wraps past 19 digits; then only the slow path uses the text */
    Py_ssize_t digits = 0, exp10 = 0;
    for (; *p >= '0' && *p <= '9'; p++, digits++) sig = sig * 10 + (uint64_t)(*p - '0');
    int bad = digits == 0 || (digits > 1 && *int_start == '0'), integer = 1;
    if (*p == '.') {
        const char *frac_start = ++p;
        integer = 0;
        for (; limit - p >= 8 && eight_digits(p); p += 8, digits += 8, exp10 -= 8) sig = sig * 100000000 + eight_value(p);
        for (; *p >= '0' && *p <= '9'; p++, digits++, exp10--) sig = sig * 10 + (uint64_t)(*p - '0');
        bad |= p == frac_start;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        integer = 0;
        int eneg = *p == '-';
        if (*p == '-' || *p == '+') p++;
        const char *exp_start = p;
        Py_ssize_t e = 0;
        for (; *p >= '0' && *p <= '9'; p++)
            if (e < 100000) e = e * 10 + (*p - '0'); /* past that only the slow path, which reads the text */
        bad |= p == exp_start;
        exp10 += eneg ? -e : e;
    }
    bad |= (cls[(unsigned char)*p] & NUM) != 0; /* the grammar ended before number_end() did */
    if (bad) return 0;
    if (integer && sig == 0) negative = 0;
    if (digits <= 19 && exp10 >= -22 && exp10 <= 22) {
        /* at most ~1.5 double ulps from the true value: (double)sig, the constant, the product */
        double d = exp10 < 0 ? (double)sig * NEG_POW10[-exp10] : (double)sig * POW10[exp10];
        float lo = (float)(d * (1.0 - 8e-16)), hi = (float)(d * (1.0 + 8e-16));
        if (lo == hi) {
            *out = negative ? -lo : lo;
            return 1;
        }
    }
    char *end = NULL;
    double v = PyOS_string_to_double(s, &end, NULL); /* overflow: +-inf, no exception */
    if (end != p || isinf(v)) {
        PyErr_Clear();
        return 0;
    }
    *out = (float)v;
    return 1;
}

static PyObject *scan_read(PyObject *self, PyObject *args) {
    PyObject *body, *positions_fn;
    int k;
    if (!PyArg_ParseTuple(args, "SiO:read", &body, &k, &positions_fn)) return NULL;
    if (k < 1 || k > 64) {
        PyErr_SetString(PyExc_ValueError, "k must be in 1..64");
        return NULL;
    }
    const char *base = PyBytes_AS_STRING(body), *limit = base + PyBytes_GET_SIZE(body);
    Cursor c = {base, limit};
    int own_spare = !spare_taken;
    Offsets off = own_spare ? spare : (Offsets){0};
    spare_taken = 1;
    off.n = 0;
    off.k = k;
    ChoiceCtx ch = {&off, base, -1, -1, NULL, 0, 0, 0, 0};
    PyObject *result = NULL, *chosen = NULL, *top = NULL, *finish = NULL, *picked = NULL;

    int ok = reserve(&off, off.cap) && walk_object(&c, on_completion, &ch); /* `top` kept for another k: resized */
    if (ok) { /* only whitespace may follow the object: a decoder refuses "{...}x" */
        skip_ws(&c);
        ok = c.p == c.end;
    }
    if (!ok || !ch.seen_choice || ch.finish_refused) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    Py_ssize_t n = off.n, m = n;
    const Py_ssize_t *index = NULL;
    Py_ssize_t *owned = NULL, few[256];
    if (n > 0) {
        picked = PyObject_CallFunction(positions_fn, "n", n);
        if (picked == NULL) goto done;
        if (picked != Py_None) {
            PyObject *seq = PySequence_Fast(picked, "positions(n) must return a sequence of ints or None");
            if (seq == NULL) goto done;
            m = PySequence_Fast_GET_SIZE(seq);
            owned = m <= (Py_ssize_t)(sizeof few / sizeof few[0]) ? few : PyMem_Malloc((size_t)m * sizeof(Py_ssize_t));
            if (owned == NULL) {
                Py_DECREF(seq);
                PyErr_NoMemory();
                goto done;
            }
            for (Py_ssize_t j = 0; j < m; j++) {
                Py_ssize_t i = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(seq, j));
                if (i < 0 || i >= n) {
                    Py_DECREF(seq);
                    if (owned != few) PyMem_Free(owned);
                    if (!PyErr_Occurred()) PyErr_SetString(PyExc_IndexError, "positions(n) returned a position outside 0..n-1");
                    goto done;
                }
                owned[j] = i;
            }
            Py_DECREF(seq);
            index = owned;
        }
    }
    chosen = PyBytes_FromStringAndSize(NULL, m * (Py_ssize_t)sizeof(float));
    top = PyBytes_FromStringAndSize(NULL, m * k * (Py_ssize_t)sizeof(float));
    if (chosen == NULL || top == NULL) {
        if (owned != few) PyMem_Free(owned);
        goto done;
    }
    float *cv = (float *)PyBytes_AS_STRING(chosen), *tv = (float *)PyBytes_AS_STRING(top);
    for (Py_ssize_t j = 0; j < m && ok; j++) { /* the entries named: read, their numbers parsed while their bytes are at hand */
        Py_ssize_t i = index ? index[j] : j;
        if (!mask_entry(&off, base, limit, i) && !read_skimmed(&off, base, i)) {
            ok = 0;
            break;
        }
        ok &= parse_number(base, limit, off.chosen[i], &cv[j]);
        for (int a = 0; a < k; a++) {
            if (a < off.count[i]) {
                ok &= parse_number(base, limit, off.top[i * k + a], &tv[j * k + a]);
            } else {
                tv[j * k + a] = -INFINITY;
            }
        }
    }
    if (owned != few) PyMem_Free(owned);
    if (!ok) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (ch.finish != NULL) {
        finish = PyUnicode_DecodeUTF8(ch.finish, ch.finish_len, "strict");
        if (finish == NULL) {
            if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) { /* not UTF-8: a decoder refuses it too */
                PyErr_Clear();
                result = Py_NewRef(Py_None);
            }
            goto done;
        }
    } else {
        finish = Py_NewRef(Py_None);
    }
    result = Py_BuildValue("(nOOOnn)", n, chosen, top, finish, ch.start, ch.end);

done:
    Py_XDECREF(chosen);
    Py_XDECREF(top);
    Py_XDECREF(finish);
    Py_XDECREF(picked);
    if (own_spare && off.cap <= SPARE_MAX && off.top_cap <= SPARE_MAX * 8) {
        spare = off;
    } else {
        PyMem_Free(off.open);
        PyMem_Free(off.close);
        PyMem_Free(off.chosen);
        PyMem_Free(off.top);
        PyMem_Free(off.count);
        if (own_spare) spare = (Offsets){0};
    }
    if (own_spare) spare_taken = 0;
    return result;
}

static PyMethodDef methods[] = {
    {"read", scan_read, METH_VARARGS, "read(body, k, positions) -> (n, chosen, top, finish_reason, start, end) | None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_logprob_scan", "A chat completion's token logprobs, read from its bytes.", -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__logprob_scan(void) {
    init_classes();
#ifdef HAVE_AVX2_VARIANT
    __builtin_cpu_init();
    use_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("popcnt") && getenv("ADAPTIVE_SD_SCAN_PORTABLE") == NULL;
#endif
    return PyModule_Create(&module);
}
