/* Body of pyx/netmm.h, compiled once per instruction set (NCM names the version).
 * No include guard: included twice.  Each tile keeps RR x (one vector) independent sums
 * in registers; every sum runs over its index in order, exactly as the scalar tails do. */

/* ---- forward: Z = In Wt (+ bias); two interleaved partial sums (even / odd j) ------ */

#define NC_FWD_TILE(VT, RR)                                                            \
    do {                                                                               \
        VT a0[RR], a1[RR];                                                             \
        for (int r = 0; r < RR; r++) { a0[r] = (VT){0}; a1[r] = (VT){0}; }             \
        for (j = 0; j + 1 < n_in; j += 2) {                                            \
            VT w0 = *(const VT*)(Wt + j * n_out + u);                                  \
            VT w1 = *(const VT*)(Wt + (j + 1) * n_out + u);                            \
            for (int r = 0; r < RR; r++) {                                             \
                a0[r] = a0[r] + x[r * n_in + j] * w0;                                  \
                a1[r] = a1[r] + x[r * n_in + j + 1] * w1;                              \
            }                                                                          \
        }                                                                              \
        if (j < n_in) {                                                                \
            VT w0 = *(const VT*)(Wt + j * n_out + u);                                  \
            for (int r = 0; r < RR; r++) a0[r] = a0[r] + x[r * n_in + j] * w0;         \
        }                                                                              \
        for (int r = 0; r < RR; r++) {                                                 \
            VT s = a0[r] + a1[r];                                                      \
            if (bias != NULL) s = s + *(const VT*)(bias + u);                          \
            *(VT*)(z + r * n_out + u) = s;                                             \
        }                                                                              \
    } while (0)

static void NCM(fwd)(const double* restrict In, Py_ssize_t B, Py_ssize_t n_in,
                     const double* restrict Wt, const double* restrict bias,
                     Py_ssize_t n_out, double* restrict Z)
{
    Py_ssize_t i, u, j, R;
    for (i = 0; i < B; i += R) {
        const double* x = In + i * n_in;
        double* z = Z + i * n_out;
        R = B - i >= 4 ? 4 : 1;
        u = 0;
        if (R == 4) {
            for (; u + 8 <= n_out; u += 8) NC_FWD_TILE(nc_m8, 4);
            for (; u + 4 <= n_out; u += 4) NC_FWD_TILE(nc_m4, 4);
        } else {
            for (; u + 8 <= n_out; u += 8) NC_FWD_TILE(nc_m8, 1);
            for (; u + 4 <= n_out; u += 4) NC_FWD_TILE(nc_m4, 1);
        }
        for (; u < n_out; u++) {                        /* the scalar order itself */
            for (Py_ssize_t r = 0; r < R; r++) {
                double s0 = 0.0, s1 = 0.0;
                for (j = 0; j + 1 < n_in; j += 2) {
                    s0 = s0 + x[r * n_in + j] * Wt[j * n_out + u];
                    s1 = s1 + x[r * n_in + j + 1] * Wt[(j + 1) * n_out + u];
                }
                if (j < n_in) s0 = s0 + x[r * n_in + j] * Wt[j * n_out + u];
                z[r * n_out + u] = s0 + s1;
                if (bias != NULL) z[r * n_out + u] = z[r * n_out + u] + bias[u];
            }
        }
    }
}

/* ---- weight gradient: gW[u, j] = sum_i dZ[i, u] In[i, j], i in order -------------- */

#define NC_BWDW_TILE(VT, UU)                                                           \
    do {                                                                               \
        VT acc[UU];                                                                    \
        for (int r = 0; r < UU; r++) acc[r] = (VT){0};                                 \
        for (i = 0; i < B; i++) {                                                      \
            VT xv = *(const VT*)(In + i * n_in + j);                                   \
            const double* c = dZ + i * n_out + u;                                      \
            for (int r = 0; r < UU; r++) acc[r] = acc[r] + c[r] * xv;                  \
        }                                                                              \
        for (int r = 0; r < UU; r++) *(VT*)(gW + (u + r) * n_in + j) = acc[r];         \
    } while (0)

static void NCM(bwd_w)(const double* restrict dZ, const double* restrict In, Py_ssize_t B,
                       Py_ssize_t n_in, Py_ssize_t n_out, double* restrict gW)
{
    Py_ssize_t i, u, j, U;
    for (u = 0; u < n_out; u += U) {
        U = n_out - u >= 8 ? 8 : (n_out - u >= 4 ? 4 : 1);
        j = 0;
        if (U == 8) {
            for (; j + 8 <= n_in; j += 8) NC_BWDW_TILE(nc_m8, 8);
            for (; j + 4 <= n_in; j += 4) NC_BWDW_TILE(nc_m4, 8);
        } else if (U == 4) {
            for (; j + 8 <= n_in; j += 8) NC_BWDW_TILE(nc_m8, 4);
            for (; j + 4 <= n_in; j += 4) NC_BWDW_TILE(nc_m4, 4);
        } else {
            for (; j + 8 <= n_in; j += 8) NC_BWDW_TILE(nc_m8, 1);
            for (; j + 4 <= n_in; j += 4) NC_BWDW_TILE(nc_m4, 1);
        }
        for (; j < n_in; j++) {
            for (Py_ssize_t r = 0; r < U; r++) {
                double s = 0.0;
                for (i = 0; i < B; i++) s = s + dZ[i * n_out + u + r] * In[i * n_in + j];
                gW[(u + r) * n_in + j] = s;
            }
        }
    }
}

/* ---- input gradient: dIn[i, j] = sum_u dZ[i, u] W[u, j], u in order --------------- */

#define NC_BWDX_TILE(VT, RR)                                                           \
    do {                                                                               \
        VT acc[RR];                                                                    \
        for (int r = 0; r < RR; r++) acc[r] = (VT){0};                                 \
        for (u = 0; u < n_out; u++) {                                                  \
            VT wv = *(const VT*)(W + u * n_in + j);                                    \
            for (int r = 0; r < RR; r++) acc[r] = acc[r] + c[r * n_out + u] * wv;      \
        }                                                                              \
        for (int r = 0; r < RR; r++) *(VT*)(dx + r * n_in + j) = acc[r];               \
    } while (0)

static void NCM(bwd_x)(const double* restrict dZ, const double* restrict W, Py_ssize_t B,
                       Py_ssize_t n_in, Py_ssize_t n_out, double* restrict dIn)
{
    Py_ssize_t i, u, j, R;
    for (i = 0; i < B; i += R) {
        const double* c = dZ + i * n_out;
        double* dx = dIn + i * n_in;
        R = B - i >= 8 ? 8 : (B - i >= 4 ? 4 : 1);
        j = 0;
        if (R == 8) {
            for (; j + 8 <= n_in; j += 8) NC_BWDX_TILE(nc_m8, 8);
            for (; j + 4 <= n_in; j += 4) NC_BWDX_TILE(nc_m4, 8);
        } else if (R == 4) {
            for (; j + 8 <= n_in; j += 8) NC_BWDX_TILE(nc_m8, 4);
            for (; j + 4 <= n_in; j += 4) NC_BWDX_TILE(nc_m4, 4);
        } else {
            for (; j + 8 <= n_in; j += 8) NC_BWDX_TILE(nc_m8, 1);
            for (; j + 4 <= n_in; j += 4) NC_BWDX_TILE(nc_m4, 1);
        }
        for (; j < n_in; j++) {
            for (Py_ssize_t r = 0; r < R; r++) {
                double s = 0.0;
                for (u = 0; u < n_out; u++) s = s + c[r * n_out + u] * W[u * n_in + j];
                dx[r * n_in + j] = s;
            }
        }
    }
}

#undef NC_FWD_TILE
#undef NC_BWDW_TILE
#undef NC_BWDX_TILE
