/*
 * deflate.h — the engine's block codec: raw deflate streams (RFC 1951), written by deflate.c, read by inflate.c.
 *
 * Table data blocks are stored as raw deflate streams (docs/format.md, "Compression"). The format is the one zlib
 * writes and reads with window bits -15, and zlib reads what this codec writes and the other way round (the unit
 * tests check both directions); the engine has its own codec because zlib spent most of the engine's CPU time:
 * a 4 KiB block took zlib 40 µs to compress and 17-20 µs to inflate on the benchmark machine (docs/benchmarks.md).
 *
 * Invariants
 *  - deflate_decompress never reads outside [in, in + n) or writes outside [out, out + outlen), whatever the input:
 *    a malformed, truncated or over-long stream is an error, never a crash and never a partial success. A stream
 *    is accepted only if it ends with a final block, produces exactly outlen bytes, and uses every byte of the input
 *    (only the padding bits of its last byte may be left).
 *  - deflate_compress writes at most cap bytes; when the stream would not fit it returns 0 and the caller stores the
 *    data raw. It is deterministic: the same input gives the same stream.
 */
#ifndef KV_DEFLATE_H
#define KV_DEFLATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Compression state reused across calls (a hash table of recent positions and a symbol buffer). One per thread or
 * per table builder; not thread-safe. */
typedef struct deflate_encoder deflate_encoder;

deflate_encoder *deflate_encoder_new(void); /* NULL when out of memory */
void deflate_encoder_free(deflate_encoder *e);

/* Compress in[0..n) into one raw deflate stream at out[0..cap). Returns the stream's length, or 0 when it would
 * not fit in cap bytes or memory ran out (the caller then keeps the data uncompressed). */
size_t deflate_compress(deflate_encoder *e, const uint8_t *in, size_t n, uint8_t *out, size_t cap);

/* Decompress the raw deflate stream in[0..n) into exactly outlen bytes at out. 0 on success, -1 when the stream is
 * malformed, truncated, followed by other bytes, or does not produce exactly outlen bytes. Thread-safe. */
int deflate_decompress(const uint8_t *in, size_t n, uint8_t *out, size_t outlen);

/* Spans: a stream written by deflate_compress_spans is one final block whose symbols are cut into spans at given
 * input offsets. No symbol crosses a span boundary and no match reaches back before its span's first byte, so a
 * span decodes alone from its first bit (given the block's code). spans[0..nspans) are the ascending offsets where
 * spans start (spans[0] = 0), each span running to the next (the last to n); bits[0..nspans] receives the bit
 * offset of each span's first symbol and, last, of the end-of-block code. The block uses the code the encoder learnt
 * (deflate_encoder_learn), its header first, or the fixed code, whichever is shorter for this input. Returns the
 * stream's length or 0 as deflate_compress does. */
size_t deflate_compress_spans(deflate_encoder *e, const uint8_t *in, size_t n, const uint32_t *spans, size_t nspans,
                              uint8_t *out, size_t cap, uint64_t *bits);

/* Learn a dynamic code from a sample, for deflate_compress_spans to use from now on: every symbol gets a length
 * (the sample's counts set them), so the code fits any later input and many streams can share one code, whose
 * decoding tables a reader then builds once. false when out of memory (the code is then unchanged). */
bool deflate_encoder_learn(deflate_encoder *e, const uint8_t *in, size_t n);

/* Decoding tables for a dynamic block's code, read from the header at the start of a stream (the final-block bit,
 * block type 2, then the code). NULL when the header is malformed, the block is not dynamic, or memory ran out;
 * *first_bit gets the bit offset just after the header. The tables are read-only and may be shared by threads. */
typedef struct deflate_tables deflate_tables;
deflate_tables *deflate_tables_new(const uint8_t *in, size_t n, uint64_t *first_bit);
void deflate_tables_free(deflate_tables *t);

/* Decode the span of a stream in[0..n) that starts at bit from_bit and ends at bit to_bit into out (at most outcap
 * bytes), with the code of tables, or the fixed code when tables is NULL, stopping early once at least `want` bytes
 * are out (a match may overshoot want, never outcap).
 * *produced gets the bytes written. 0 on success; -1 when the span is malformed: it does not end exactly at to_bit
 * (a symbol straddles it, or the block ends before it), a match reaches before out, or out has no room. */
int deflate_decode_span(const uint8_t *in, size_t n, uint64_t from_bit, uint64_t to_bit, const deflate_tables *tables,
                        uint8_t *out, size_t outcap, size_t want, size_t *produced);

/* 0 when the symbol at bit `bit` of in[0..n) is the end-of-block code (of tables, or of the fixed code when tables
 * is NULL) and the stream ends in the byte holding its last bit; -1 otherwise. */
int deflate_check_end(const uint8_t *in, size_t n, uint64_t bit, const deflate_tables *tables);

/* The same, a piece at a time: begin, then ask for more output as it is needed. The state (fields private) lives in
 * the caller's memory; out must stay valid while it is used. deflate_span_more decodes until at least want bytes
 * are out in all or the span ends, and returns 0 (more to come), 1 (the span ended exactly at to_bit) or -1 (the
 * span is malformed, as for deflate_decode_span; it stays so). out[0..o - out) holds what was decoded. */
typedef struct deflate_span {
    const uint8_t *in, *p, *end;
    uint64_t buf;
    unsigned left;
    size_t over;
    uint64_t stop_bit;
    const deflate_tables *tables;
    uint8_t *out, *o, *oend;
    int state;
} deflate_span;
void deflate_span_begin(deflate_span *sp, const uint8_t *in, size_t n, uint64_t from_bit, uint64_t to_bit,
                        const deflate_tables *tables, uint8_t *out, size_t outcap);
int deflate_span_more(deflate_span *sp, size_t want);

/* The format's constants (RFC 1951 section 3.2.5), shared by both sides; defined in inflate.c. Length symbol
 * 257 + i stands for length_base[i] plus length_extra[i] extra bits, distance symbol i for dist_base[i] plus
 * dist_extra[i]; a dynamic block sends the code-length code's lengths in precode_order. */
extern const uint16_t deflate_length_base[29], deflate_dist_base[30];
extern const uint8_t deflate_length_extra[29], deflate_dist_extra[30], deflate_precode_order[19];

#endif /* KV_DEFLATE_H */
