/* Body of the fused (points-sharing-a-batch) products, compiled once per instruction set
 * like pyx/netmm_impl.h (NCF names the version).  No include guard: included twice.
 *
 * P points share the batch rows X (B x n_in) and differ in their weights.  A tile keeps,
 * for RR rows and one 8-wide column vector, the sums of PP points side by side in
 * registers, so each x element (a broadcast) and each row vector of X is loaded once for
 * PP points instead of once per point.  Every element's sum is the one of pyx/netmm.h
 * (P.13), term for term, so the results are the same bits (checked by the driver).
 * Shapes handled: B % RR == 0, n_out % 8 == 0, n_in % 8 == 0 (the demo's first layer);
 * this is a measurement, not a general kernel. */

/* Z_p = X Wt_p: even-j and odd-j partial sums from +0, then their sum (no bias: the first
 * hidden layer has none) */
#define NCF_FWD(RR, PP)                                                                 \
static void NCF(fwd_r##RR##_p##PP)(const double* restrict X, Py_ssize_t B,              \
                                   Py_ssize_t n_in, const double* const* Wt,            \
                                   Py_ssize_t P, Py_ssize_t n_out, double* const* Z)    \
{                                                                                       \
    for (Py_ssize_t i = 0; i < B; i += RR) {                                            \
        const double* x = X + i * n_in;                                                 \
        for (Py_ssize_t u = 0; u < n_out; u += 8) {                                     \
            for (Py_ssize_t p = 0; p < P; p += PP) {                                    \
                nc_m8 a0[PP][RR], a1[PP][RR];                                           \
                for (int q = 0; q < PP; q++)                                            \
                    for (int r = 0; r < RR; r++) { a0[q][r] = (nc_m8){0};               \
                                                   a1[q][r] = (nc_m8){0}; }             \
                for (Py_ssize_t j = 0; j < n_in; j += 2) {                              \
                    nc_m8 w0[PP], w1[PP];                                               \
                    for (int q = 0; q < PP; q++) {                                      \
                        w0[q] = *(const nc_m8*)(Wt[p + q] + j * n_out + u);             \
                        w1[q] = *(const nc_m8*)(Wt[p + q] + (j + 1) * n_out + u);       \
                    }                                                                   \
                    for (int r = 0; r < RR; r++) {                                      \
                        double x0 = x[r * n_in + j], x1 = x[r * n_in + j + 1];          \
                        for (int q = 0; q < PP; q++) {                                  \
                            a0[q][r] = a0[q][r] + x0 * w0[q];                           \
                            a1[q][r] = a1[q][r] + x1 * w1[q];                           \
                        }                                                               \
                    }                                                                   \
                }                                                                       \
                for (int q = 0; q < PP; q++)                                            \
                    for (int r = 0; r < RR; r++)                                        \
                        *(nc_m8*)(Z[p + q] + (i + r) * n_out + u) = a0[q][r] + a1[q][r];\
            }                                                                           \
        }                                                                               \
    }                                                                                   \
}

/* gW_p[u, j] = sum_i dZ_p[i, u] X[i, j], i in order from +0, in passes of 64 rows whose
 * carried sums are stored in gW_p and read back (exact), as nc_net_bwd_w does */
#define NCF_BWDW(PP)                                                                    \
static void NCF(bwd_w_p##PP)(const double* const* dZ, const double* restrict X,         \
                             Py_ssize_t B, Py_ssize_t n_in, Py_ssize_t n_out,           \
                             Py_ssize_t P, double* const* gW)                           \
{                                                                                       \
    Py_ssize_t i0, i1;                                                                  \
    for (i0 = 0; i0 < B; i0 = i1) {                                                     \
        i1 = B - i0 > 64 ? i0 + 64 : B;                                                 \
        for (Py_ssize_t p = 0; p < P; p += PP)                                          \
        for (Py_ssize_t u = 0; u < n_out; u += 8)                                       \
        for (Py_ssize_t j = 0; j < n_in; j += 8) {                                      \
            nc_m8 acc[PP][8];                                                           \
            for (int q = 0; q < PP; q++)                                                \
                for (int r = 0; r < 8; r++)                                             \
                    acc[q][r] = i0 == 0 ? (nc_m8){0}                                    \
                                : *(const nc_m8*)(gW[p + q] + (u + r) * n_in + j);      \
            for (Py_ssize_t i = i0; i < i1; i++) {                                      \
                nc_m8 xv = *(const nc_m8*)(X + i * n_in + j);                           \
                for (int q = 0; q < PP; q++) {                                          \
                    const double* c = dZ[p + q] + i * n_out + u;                        \
                    for (int r = 0; r < 8; r++) acc[q][r] = acc[q][r] + c[r] * xv;      \
                }                                                                       \
            }                                                                           \
            for (int q = 0; q < PP; q++)                                                \
                for (int r = 0; r < 8; r++)                                             \
                    *(nc_m8*)(gW[p + q] + (u + r) * n_in + j) = acc[q][r];              \
        }                                                                               \
    }                                                                                   \
}

NCF_FWD(4, 1)
NCF_FWD(4, 2)
NCF_FWD(2, 4)
NCF_BWDW(1)
NCF_BWDW(2)
NCF_BWDW(4)

#undef NCF_FWD
#undef NCF_BWDW
