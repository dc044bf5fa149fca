/* Run a model exported by `sparsecc export-c model.scc DIR` from C (no Python anywhere).
 *
 *   cc -O2 -I DIR run_model.c -L DIR -lsparsecc_model -Wl,-rpath,DIR -o run_model
 *   ./run_model BATCH [in0.bin in1.bin ... [OUT_PREFIX]]
 *
 * Each inN.bin holds input N as raw little-endian values in the model's (torch) layout and
 * dtype (float32, or int64 token ids); with no input files the inputs are a fixed ramp. The
 * program runs the model, prints every output's shape and first values, and with OUT_PREFIX
 * writes output N to OUT_PREFIX<N>.bin.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "sparsecc_model.h"

static int64_t numel(const int64_t *dims, int rank) {
    int64_t n = 1;
    for (int d = 0; d < rank; d++) n *= dims[d];
    return n;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s BATCH [in0.bin ...] [OUT_PREFIX]\n", argv[0]);
        return 2;
    }
    int64_t batch = strtoll(argv[1], NULL, 10);
    int nin = sparsecc_model_num_inputs(), nout = sparsecc_model_num_outputs();
    int files = argc - 2 >= nin ? nin : 0;
    const char *out_prefix = argc - 2 > nin ? argv[2 + nin] : NULL;
    void **ins = calloc(nin, sizeof *ins), **outs = calloc(nout, sizeof *outs);
    int64_t dims[8];
    for (int i = 0; i < nin; i++) {
        int rank = sparsecc_model_input_shape(i, batch, dims);
        int64_t n = numel(dims, rank);
        size_t size = sparsecc_model_input_dtype(i) == 1 ? 8 : 4;
        ins[i] = malloc((size_t)n * size + 1);
        if (files) {
            FILE *f = fopen(argv[2 + i], "rb");
            if (!f || fread(ins[i], size, (size_t)n, f) != (size_t)n) {
                fprintf(stderr, "cannot read %lld values from %s\n", (long long)n, argv[2 + i]);
                return 1;
            }
            fclose(f);
        } else {
            for (int64_t k = 0; k < n; k++) {
                if (size == 8) ((int64_t *)ins[i])[k] = k % 7;
                else ((float *)ins[i])[k] = (float)(k % 13) / 13.0f - 0.5f;
            }
        }
    }
    for (int j = 0; j < nout; j++) {
        int rank = sparsecc_model_output_shape(j, batch, dims);
        size_t size = sparsecc_model_output_dtype(j) == 1 ? 8 : 4;
        outs[j] = malloc((size_t)numel(dims, rank) * size + 1);
    }
    sparsecc_model *m = sparsecc_model_create(0);
    if (!m) {
        fprintf(stderr, "create failed\n");
        return 1;
    }
    if (sparsecc_model_run(m, batch, (const void *const *)ins, outs) != 0) {
        fprintf(stderr, "run failed: %s\n", sparsecc_model_error(m));
        return 1;
    }
    for (int j = 0; j < nout; j++) {
        int rank = sparsecc_model_output_shape(j, batch, dims);
        int64_t n = numel(dims, rank);
        printf("output %d: shape (", j);
        for (int d = 0; d < rank; d++) printf(d ? ", %lld" : "%lld", (long long)dims[d]);
        printf(")");
        for (int64_t k = 0; k < n && k < 5; k++) {
            if (sparsecc_model_output_dtype(j) == 1) printf(" %lld", (long long)((int64_t *)outs[j])[k]);
            else printf(" %.6g", ((float *)outs[j])[k]);
        }
        printf("%s\n", n > 5 ? " ..." : "");
        if (out_prefix) {
            char path[4096];
            snprintf(path, sizeof path, "%s%d.bin", out_prefix, j);
            FILE *f = fopen(path, "wb");
            size_t size = sparsecc_model_output_dtype(j) == 1 ? 8 : 4;
            if (!f || fwrite(outs[j], size, (size_t)n, f) != (size_t)n) {
                fprintf(stderr, "cannot write %s\n", path);
                return 1;
            }
            fclose(f);
        }
    }
    sparsecc_model_destroy(m);
    for (int i = 0; i < nin; i++) free(ins[i]);
    for (int j = 0; j < nout; j++) free(outs[j]);
    free(ins);
    free(outs);
    return 0;
}
