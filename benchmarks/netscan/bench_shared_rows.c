/* Points sharing a batch: does the first layer of the demo network pay to run as one
 * product over P points?  (docs/potentials.md, "Points sharing a batch".)
 *
 * Build and run through benchmarks/bench_netscan.py (the project's flags: -O3
 * -ffp-contract=off -fno-math-errno; the AVX-512F versions are compiled with
 * #pragma GCC target, exactly as pyx/netmm.h does, and chosen at run time).
 *
 *   bench_shared_rows ISA B REPS     ISA: 0 baseline (SSE2), 2 AVX-512F; B: batch rows
 *                                    (2048: the full batch, read in place); REPS: calls
 *                                    per timed trial at P = 1 (REPS / P at P points)
 *
 * For P = 1, 4, 8 points with their own weights and the same minibatch rows, times per
 * point-step (ns), best of TRIALS:
 *   sep      P x (gather the rows, transpose W_p, nc_net_fwd, nc_net_bwd_w), each point
 *            in its own buffers (the P points' activations alive at once, as fusing needs)
 *   sep(1 ws) the same with one workspace for every point, as a scan thread runs today
 *   wide     gather once, W_p^T side by side as one (n_in x P n_out) matrix, ONE
 *            nc_net_fwd and ONE nc_net_bwd_w over P n_out columns (dZ given side by side)
 *   wide+cp  wide, plus the copies between the side-by-side layout and the per-point
 *            buffers the rest of the pass reads (Z_all -> Z_p, dZ_p -> dZ_all)
 *   fused    gather once, fused kernels (fused_impl.h) with PP points per register tile
 * and, for the share, the whole per-point pass of the network (products, BatchNorm,
 * affine, ReLU; no loss), as _c_grad_net runs it.  Every variant's Z_p and gW_p are
 * compared with sep's by memcmp (bitwise); a mismatch exits with status 1. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef ptrdiff_t Py_ssize_t;
#include "netmm.h"

#define NCF(name) ncf_##name##_base
#include "fused_impl.h"
#undef NCF
#if NC_NET_X86
#pragma GCC push_options
#pragma GCC target("avx512f")
#define NCF(name) ncf_##name##_avx512
#include "fused_impl.h"
#undef NCF
#pragma GCC pop_options
#endif

#if NC_NET_X86
#pragma GCC push_options
#pragma GCC target("avx512f")
#endif
/* the machine's arithmetic peak without FMA (the project's -ffp-contract=off): 16
 * independent chains of a 512-bit multiply then add; 256 FLOP per iteration */
static double peak_chains(long n, double m, double c)
{
    nc_m8 acc[16];
    for (int k = 0; k < 16; k++) acc[k] = (nc_m8){0} + (double)k;
    for (long it = 0; it < n; it++)
        for (int k = 0; k < 16; k++) acc[k] = acc[k] * m + c;
    double s = 0.0;
    for (int k = 0; k < 16; k++) for (int e = 0; e < 8; e++) s += acc[k][e];
    return s;
}
#if NC_NET_X86
#pragma GCC pop_options
#endif

#define N_DATA 2048
#define D 16
#define H1 32
#define H2 32
#define C 4
#define PMAX 8
#define TRIALS 41

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);   /* CPU time: the machine is shared */
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static uint64_t rs = 88172645463325252ULL;
static double urand(void)   /* xorshift64, uniform in [-1, 1) */
{
    rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17;
    return (double)(rs >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

static double* dalloc(size_t n)
{
    double* a = aligned_alloc(64, ((n * sizeof(double) + 63) / 64) * 64);
    if (!a) { perror("aligned_alloc"); exit(2); }
    return a;
}

/* the isa's fused kernels */
typedef void (*fwd_f)(const double*, Py_ssize_t, Py_ssize_t, const double* const*,
                      Py_ssize_t, Py_ssize_t, double* const*);
typedef void (*bww_f)(const double* const*, const double*, Py_ssize_t, Py_ssize_t,
                      Py_ssize_t, Py_ssize_t, double* const*);
static fwd_f f_fwd[3];
static bww_f f_bww[3];

/* ---- state --------------------------------------------------------------------------- */
static Py_ssize_t B;
static double *X, *Xb, *W1[PMAX], *Wt1[PMAX], *Z[PMAX], *dZ[PMAX], *gW[PMAX];
static double *Wtall, *Zall, *dZall, *gWall;
static double *Zr[PMAX], *gWr[PMAX];      /* sep's results (the reference) */
static Py_ssize_t rows[N_DATA];

static void gather(void)     /* full batch: _c_grad_net reads X itself, no copy */
{
    if (B == N_DATA) return;
    for (Py_ssize_t i = 0; i < B; i++) memcpy(Xb + i * D, X + rows[i] * D, D * sizeof(double));
}

static void run_sep(int P)
{
    for (int p = 0; p < P; p++) {
        gather();
        nc_net_transpose(W1[p], H1, D, Wt1[p]);
        nc_net_fwd(Xb, B, D, Wt1[p], NULL, H1, Z[p]);
        nc_net_bwd_w(dZ[p], Xb, B, D, H1, gW[p]);
    }
}

/* sep as the scan runs it: one thread's workspace (Wt, Z, dZ) serves every point in turn
 * (only W_p and gW_p are the point's own) */
static void run_sep_ws(int P)
{
    for (int p = 0; p < P; p++) {
        gather();
        nc_net_transpose(W1[p], H1, D, Wt1[0]);
        nc_net_fwd(Xb, B, D, Wt1[0], NULL, H1, Z[0]);
        nc_net_bwd_w(dZ[0], Xb, B, D, H1, gW[p]);
    }
}

static void transpose_wide(int P)
{
    Py_ssize_t ld = (Py_ssize_t)P * H1;
    for (int p = 0; p < P; p++)
        for (Py_ssize_t u = 0; u < H1; u += 8)
            for (Py_ssize_t j = 0; j < D; j++)
                for (int k = 0; k < 8; k++)
                    Wtall[j * ld + p * H1 + u + k] = W1[p][(u + k) * D + j];
}

/* copies: 1 = also the layout copies the rest of the pass would need */
static void run_wide(int P, int copies)
{
    Py_ssize_t ld = (Py_ssize_t)P * H1;
    gather();
    transpose_wide(P);
    nc_net_fwd(Xb, B, D, Wtall, NULL, ld, Zall);
    if (copies)
        for (int p = 0; p < P; p++)
            for (Py_ssize_t i = 0; i < B; i++)
                memcpy(Z[p] + i * H1, Zall + i * ld + p * H1, H1 * sizeof(double));
    if (copies)
        for (int p = 0; p < P; p++)
            for (Py_ssize_t i = 0; i < B; i++)
                memcpy(dZall + i * ld + p * H1, dZ[p] + i * H1, H1 * sizeof(double));
    nc_net_bwd_w(dZall, Xb, B, D, ld, gWall);     /* rows p*H1..: gW_p, back to back */
}

static void run_fused(int P, int k)
{
    gather();
    for (int p = 0; p < P; p++) nc_net_transpose(W1[p], H1, D, Wt1[p]);
    f_fwd[k](Xb, B, D, (const double* const*)Wt1, P, H1, Z);
    f_bww[k]((const double* const*)dZ, Xb, B, D, H1, P, gW);
}

/* ---- the whole per-point pass (as _c_grad_net, without the loss) -------------------- */
static double *q1g, *q1b, *W2, *q2g, *q2b, *W3, *b3, *Zh1, *A1, *Zh2, *A2, *Pout, *Wt,
              *mean, *sd1, *sd2, *m1, *m2, *bufA, *bufB, *g[8];

static void whole_pass(int p)
{
    gather();
    nc_net_transpose(W1[p], H1, D, Wt);
    nc_net_fwd(Xb, B, D, Wt, NULL, H1, Zh1);
    nc_net_bn_act_fwd(Zh1, A1, B, H1, 1, 1e-5, mean, sd1, 1, q1g, q1b, 1);
    nc_net_transpose(W2, H2, H1, Wt);
    nc_net_fwd(A1, B, H1, Wt, NULL, H2, Zh2);
    nc_net_bn_act_fwd(Zh2, A2, B, H2, 1, 1e-5, mean, sd2, 1, q2g, q2b, 1);
    nc_net_transpose(W3, C, H2, Wt);
    nc_net_fwd(A2, B, H2, Wt, b3, C, Pout);
    /* Pout stands for dL/dP (the loss is not timed) */
    nc_net_bwd_w(Pout, A2, B, H2, C, g[0]);
    nc_net_bwd_x(Pout, W3, B, H2, C, bufA);
    nc_net_bn_act_bwd(bufA, Zh2, A2, B, H2, 1, 1, 1, q2g, g[1], g[2], sd2, m1, m2);
    nc_net_bwd_w(bufA, A1, B, H1, H2, g[3]);
    nc_net_bwd_x(bufA, W2, B, H1, H2, bufB);
    nc_net_bn_act_bwd(bufB, Zh1, A1, B, H1, 1, 1, 1, q1g, g[4], g[5], sd1, m1, m2);
    nc_net_bwd_w(bufB, Xb, B, D, H1, g[6]);
    (void)p;
}

static double best_ns(void (*fn)(int, int), int a, int b2, long reps, int P)
{
    double best = 1e300;
    reps = reps / P > 0 ? reps / P : 1;      /* short trials (same work per trial) */
    for (int t = 0; t < TRIALS; t++) {
        double t0 = now();
        for (long r = 0; r < reps; r++) fn(a, b2);
        double dt = (now() - t0) / reps / P * 1e9;
        if (dt < best) best = dt;
    }
    return best;
}
static void w_sep(int P, int k) { (void)k; run_sep(P); }
static void w_sepws(int P, int k) { (void)k; run_sep_ws(P); }
static void w_wide(int P, int c) { run_wide(P, c); }
static void w_fused(int P, int k) { run_fused(P, k); }
static void w_whole(int p, int k) { (void)k; whole_pass(p); }
static void w_first(int p, int k)     /* the first layer's share, same code as whole_pass */
{
    (void)k;
    gather();
    nc_net_transpose(W1[p], H1, D, Wt);
    nc_net_fwd(Xb, B, D, Wt, NULL, H1, Zh1);
    nc_net_bwd_w(bufB, Xb, B, D, H1, g[6]);
}

static void w_gather(int p, int k) { (void)p; (void)k; gather(); }
static void w_transp(int p, int k) { (void)k; nc_net_transpose(W1[p], H1, D, Wt); }
static void w_fwd1(int p, int k) { (void)p; (void)k; nc_net_fwd(Xb, B, D, Wt, NULL, H1, Zh1); }
static void w_bww1(int p, int k) { (void)p; (void)k; nc_net_bwd_w(bufB, Xb, B, D, H1, g[6]); }

static int check(const char* what, int P, int wide)
{
    for (int p = 0; p < P; p++) {
        if (wide) {
            Py_ssize_t ld = (Py_ssize_t)P * H1;
            for (Py_ssize_t i = 0; i < B; i++)
                if (memcmp(Zall + i * ld + p * H1, Zr[p] + i * H1, H1 * sizeof(double))) {
                    printf("MISMATCH %s Z P=%d p=%d\n", what, P, p); return 1;
                }
            if (memcmp(gWall + (size_t)p * H1 * D, gWr[p], H1 * D * sizeof(double))) {
                printf("MISMATCH %s gW P=%d p=%d\n", what, P, p); return 1;
            }
        } else {
            if (memcmp(Z[p], Zr[p], B * H1 * sizeof(double))
                    || memcmp(gW[p], gWr[p], H1 * D * sizeof(double))) {
                printf("MISMATCH %s P=%d p=%d\n", what, P, p); return 1;
            }
        }
    }
    return 0;
}

int main(int argc, char** argv)
{
    int isa = argc > 1 ? atoi(argv[1]) : -1;
    B = argc > 2 ? atol(argv[2]) : 32;
    long reps = argc > 3 ? atol(argv[3]) : 2000;
    if (B < 4 || B > N_DATA || B % 4 || reps < 1) {
        printf("B must be a multiple of 4 in [4, %d] and REPS >= 1, got B=%ld REPS=%ld\n",
               N_DATA, (long)B, reps);
        return 3;
    }
    if (nc_net_set_isa(isa) < 0) { printf("isa %d not available\n", isa); return 3; }
    isa = nc_net_isa_cur;
    if (isa == NC_NET_ISA_BASE) {
        f_fwd[0] = ncf_fwd_r4_p1_base; f_fwd[1] = ncf_fwd_r4_p2_base; f_fwd[2] = ncf_fwd_r2_p4_base;
        f_bww[0] = ncf_bwd_w_p1_base; f_bww[1] = ncf_bwd_w_p2_base; f_bww[2] = ncf_bwd_w_p4_base;
    }
#if NC_NET_X86
    else {
        f_fwd[0] = ncf_fwd_r4_p1_avx512; f_fwd[1] = ncf_fwd_r4_p2_avx512;
        f_fwd[2] = ncf_fwd_r2_p4_avx512;
        f_bww[0] = ncf_bwd_w_p1_avx512; f_bww[1] = ncf_bwd_w_p2_avx512;
        f_bww[2] = ncf_bwd_w_p4_avx512;
    }
#endif
    X = dalloc(N_DATA * D);
    for (int i = 0; i < N_DATA * D; i++) X[i] = urand();
    Xb = B == N_DATA ? X : dalloc((size_t)B * D);
    if (B == N_DATA) for (Py_ssize_t i = 0; i < B; i++) rows[i] = i;
    else for (Py_ssize_t i = 0; i < B; i++) rows[i] = (Py_ssize_t)((urand() + 1.0) * 0.5 * N_DATA) % N_DATA;
    for (int p = 0; p < PMAX; p++) {
        W1[p] = dalloc(H1 * D); Wt1[p] = dalloc(H1 * D);
        Z[p] = dalloc((size_t)B * H1); dZ[p] = dalloc((size_t)B * H1);
        gW[p] = dalloc(H1 * D); Zr[p] = dalloc((size_t)B * H1); gWr[p] = dalloc(H1 * D);
        for (int k = 0; k < H1 * D; k++) W1[p][k] = 0.25 * urand();
        for (Py_ssize_t k = 0; k < B * H1; k++) dZ[p][k] = urand() / B;
    }
    Wtall = dalloc((size_t)PMAX * H1 * D); Zall = dalloc((size_t)B * PMAX * H1);
    dZall = dalloc((size_t)B * PMAX * H1); gWall = dalloc((size_t)PMAX * H1 * D);
    /* whole-pass buffers */
    q1g = dalloc(H1); q1b = dalloc(H1); q2g = dalloc(H2); q2b = dalloc(H2);
    W2 = dalloc(H2 * H1); W3 = dalloc(C * H2); b3 = dalloc(C);
    Zh1 = dalloc((size_t)B * H1); A1 = dalloc((size_t)B * H1); Zh2 = dalloc((size_t)B * H2);
    A2 = dalloc((size_t)B * H2); Pout = dalloc((size_t)B * C); Wt = dalloc(H1 * H2 + H1 * D);
    mean = dalloc(H1 + H2); sd1 = dalloc(H1); sd2 = dalloc(H2); m1 = dalloc(H1 + H2);
    m2 = dalloc(H1 + H2); bufA = dalloc((size_t)B * H2); bufB = dalloc((size_t)B * H1);
    for (int k = 0; k < 7; k++) g[k] = dalloc(H1 * H2 + H1 * D);
    for (int k = 0; k < H1; k++) { q1g[k] = 1.0 + 0.1 * urand(); q1b[k] = 0.1 * urand(); }
    for (int k = 0; k < H2; k++) { q2g[k] = 1.0 + 0.1 * urand(); q2b[k] = 0.1 * urand(); }
    for (int k = 0; k < H2 * H1; k++) W2[k] = 0.2 * urand();
    for (int k = 0; k < C * H2; k++) W3[k] = 0.2 * urand();
    for (int k = 0; k < C; k++) b3[k] = 0.1 * urand();
    for (Py_ssize_t k = 0; k < B * H1; k++) bufB[k] = urand() / B;

    printf("isa %s  B %ld  reps %ld  (ns of thread CPU time per point-step, best of %d)\n",
           isa == NC_NET_ISA_BASE ? "baseline" : "avx512f", (long)B, reps, TRIALS);
    int bad = 0;
    int Ps[3] = {1, 4, 8};
    for (int ip = 0; ip < 3; ip++) {
        int P = Ps[ip];
        run_sep(P);
        for (int p = 0; p < P; p++) {
            memcpy(Zr[p], Z[p], B * H1 * sizeof(double));
            memcpy(gWr[p], gW[p], H1 * D * sizeof(double));
        }
        for (int p = 0; p < P; p++)         /* dZ side by side for wide (no copies) */
            for (Py_ssize_t i = 0; i < B; i++)
                memcpy(dZall + i * P * H1 + p * H1, dZ[p] + i * H1, H1 * sizeof(double));
        run_wide(P, 0);
        bad |= check("wide", P, 1);
        double t_sep = best_ns(w_sep, P, 0, reps, P);
        double t_sepws = best_ns(w_sepws, P, 0, reps, P);
        double t_wide = best_ns(w_wide, P, 0, reps, P);
        double t_widec = best_ns(w_wide, P, 1, reps, P);
        printf("P=%d  sep %8.1f  sep(1 ws) %8.1f  wide %8.1f  wide+cp %8.1f", P, t_sep, t_sepws,
               t_wide, t_widec);
        const char* names[3] = {"fused(r4,p1)", "fused(r4,p2 / p2)", "fused(r2,p4 / p4)"};
        int PPs[3] = {1, 2, 4};
        for (int k = 0; k < 3; k++) {
            if (P % PPs[k]) continue;
            for (int p = 0; p < P; p++) { memset(Z[p], 0xff, B * H1 * 8); memset(gW[p], 0xff, H1 * D * 8); }
            run_fused(P, k);
            bad |= check(names[k], P, 0);
            printf("  %s %8.1f", names[k], best_ns(w_fused, P, k, reps, P));
        }
        printf("\n");
    }
    /* whole pass of one point and its first layer, same code, same run */
    long wreps = reps;
    double t_whole = best_ns(w_whole, 0, 0, wreps, 1);
    double t_first = best_ns(w_first, 0, 0, wreps, 1);
    printf("whole pass (products + BN/affine/ReLU, no loss) %8.1f  first layer (gather, "
           "transpose, fwd, bwd_w) %8.1f  share %.3f\n", t_whole, t_first, t_first / t_whole);
    printf("first layer parts: gather %.1f  transpose %.1f  fwd %.1f  bwd_w %.1f\n",
           best_ns(w_gather, 0, 0, wreps, 1), best_ns(w_transp, 0, 0, wreps, 1),
           best_ns(w_fwd1, 0, 0, wreps, 1), best_ns(w_bww1, 0, 0, wreps, 1));
    if (isa != NC_NET_ISA_BASE) {
        double pk = 1e300;
        for (int t = 0; t < 11; t++) {
            double t0 = now();
            volatile double sink = peak_chains(200000, 1.0000000001, 1e-9);
            (void)sink;
            double dt = now() - t0;
            if (dt < pk) pk = dt;
        }
        printf("peak (512-bit multiply + add, no FMA): %.1f GFLOP/s\n", 256.0 * 200000 / pk * 1e-9);
    }
    long fl1 = 2L * 2 * B * D * H1, flall = 2L * B * (2 * (D * H1 + H1 * H2 + H2 * C)
                                                     + H1 * H2 + H2 * C);
    printf("FLOP per point-step: first layer %ld, all products %ld, share %.3f\n",
           fl1, flall, (double)fl1 / flall);
    printf(bad ? "BITWISE CHECK FAILED\n" : "bitwise: every variant equals sep (memcmp)\n");
    return bad;
}
