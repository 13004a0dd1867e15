/* Body of the integrator lane kernel (included by integ_lanes.h once per instruction set
 * with NCIL(name) naming its functions).  See integ_lanes.h. */

/* g = grad f(q) + k q (_grad_V): the potential's scalar gradient, lane-wise, then k q
 * added only in the lanes with k != 0 (the scalar code skips the addition there, which
 * keeps a -0.0 gradient entry -0.0). */
/* s = A q, row i summed from its first term in column order (the scalar kernels'
   order); four rows at a time so their independent sums overlap in the pipeline */
NCI_INLINE void NCIL(matvec)(const double* restrict A, const Py_ssize_t d,
                            const nci_vd* restrict q, nci_vd* restrict s)
{
    Py_ssize_t i = 0;
    for (; i + 4 <= d; i += 4) {
        const double* a = A + i * d;
        nci_vd s0 = a[0] * q[0], s1 = a[d] * q[0], s2 = a[2 * d] * q[0],
               s3 = a[3 * d] * q[0];
        for (Py_ssize_t j = 1; j < d; ++j) {
            const nci_vd qj = q[j];
            s0 = s0 + a[j] * qj;
            s1 = s1 + a[d + j] * qj;
            s2 = s2 + a[2 * d + j] * qj;
            s3 = s3 + a[3 * d + j] * qj;
        }
        s[i] = s0; s[i + 1] = s1; s[i + 2] = s2; s[i + 3] = s3;
    }
    for (; i < d; ++i) {
        nci_vd si = A[i * d] * q[0];
        for (Py_ssize_t j = 1; j < d; ++j) si = si + A[i * d + j] * q[j];
        s[i] = si;
    }
}

NCI_INLINE void NCIL(grad)(const nci_ctx* c, const Py_ssize_t d, const nci_vd* restrict q,
                          nci_vd* restrict g, nci_vd* restrict Aq, const nci_vd k,
                          const nci_vl k_on)
{
    if (c->pot == NCI_POT_QUADRATIC) {
        /* _c_grad_quadratic: s = A[i, 0] q0 + A[i, 1] q1 + ...; g_i = s - b_i */
        NCIL(matvec)(c->A, d, q, g);
        for (Py_ssize_t i = 0; i < d; ++i) g[i] = g[i] - c->b[i];
    } else {
        /* _c_grad_rayleigh: iqq = 1/qq; s_i = (Aq)_i; qAq = q0 s0 + q1 s1 + ...;
           Aq_i = s_i iqq; t = qAq iqq; ti = t iqq; g_i = Aq_i - q_i ti */
        nci_vd qq = q[0] * q[0], qAq;
        for (Py_ssize_t i = 1; i < d; ++i) qq = qq + q[i] * q[i];
        const nci_vd iqq = 1.0 / qq;
        NCIL(matvec)(c->A, d, q, Aq);
        qAq = q[0] * Aq[0];
        for (Py_ssize_t i = 1; i < d; ++i) qAq = qAq + q[i] * Aq[i];
        for (Py_ssize_t i = 0; i < d; ++i) Aq[i] = Aq[i] * iqq;
        const nci_vd ti = (qAq * iqq) * iqq;
        for (Py_ssize_t i = 0; i < d; ++i) g[i] = Aq[i] - q[i] * ti;
    }
    for (Py_ssize_t i = 0; i < d; ++i) {
        const nci_vd gk = g[i] + k * q[i];
        g[i] = (nci_vd) (((nci_vl) gk & k_on) | ((nci_vl) g[i] & ~k_on));
    }
}

static inline nci_vd NCIL(load)(const double* x)
{
    nci_vd v;
    memcpy(&v, x, sizeof v);
    return v;
}

/* Strang (_m1_strang): v = c v - a g; q += τ v; g = ∇V(q); v = c (v - a g) */
NCI_INLINE void NCIL(strang)(const nci_ctx* c, const Py_ssize_t d, nci_vd* q, nci_vd* v,
                            nci_vd* g, nci_vd* Aq, const nci_vd cc, const nci_vd aa,
                            const nci_vd tau, const nci_vd k, const nci_vl k_on)
{
    for (Py_ssize_t i = 0; i < d; ++i) v[i] = cc * v[i] - aa * g[i];
    for (Py_ssize_t i = 0; i < d; ++i) q[i] = q[i] + tau * v[i];
    NCIL(grad)(c, d, q, g, Aq, k, k_on);
    for (Py_ssize_t i = 0; i < d; ++i) v[i] = cc * (v[i] - aa * g[i]);
}

/* _rhs for M1 (dy = (v, -(μ v + ∇V)/m)) and M4 (dy = -∇V/μ) at the state yv */
NCI_INLINE void NCIL(rhs)(const nci_ctx* c, const Py_ssize_t d, const nci_vd* yv, nci_vd* dy,
                         nci_vd* g, nci_vd* Aq, const nci_vd m, const nci_vd mu,
                         const nci_vd k, const nci_vl k_on)
{
    NCIL(grad)(c, d, yv, g, Aq, k, k_on);
    if (c->model == NCI_M1) {
        for (Py_ssize_t i = 0; i < d; ++i) {
            dy[i] = yv[d + i];
            dy[d + i] = -(mu * yv[d + i] + g[i]) / m;
        }
    } else {
        for (Py_ssize_t i = 0; i < d; ++i) dy[i] = -g[i] / mu;
    }
}

/* _rk4_step: k1..k4 at y, y + (h/2) k1, y + (h/2) k2, y + h k3; y += (h/6)(k1 + 2k2 + 2k3
   + k4), every product and sum in the scalar code's order */
NCI_INLINE void NCIL(rk4)(const nci_ctx* c, const Py_ssize_t d, Py_ssize_t n, nci_vd* y,
                         nci_vd* K, nci_vd* yt,
                         nci_vd* g, nci_vd* Aq, const nci_vd h, const nci_vd m,
                         const nci_vd mu, const nci_vd k, const nci_vl k_on)
{
    nci_vd *k1 = K, *k2 = K + n, *k3 = K + 2 * n, *k4 = K + 3 * n;
    NCIL(rhs)(c, d, y, k1, g, Aq, m, mu, k, k_on);
    for (Py_ssize_t i = 0; i < n; ++i) yt[i] = y[i] + 0.5 * h * k1[i];
    NCIL(rhs)(c, d, yt, k2, g, Aq, m, mu, k, k_on);
    for (Py_ssize_t i = 0; i < n; ++i) yt[i] = y[i] + 0.5 * h * k2[i];
    NCIL(rhs)(c, d, yt, k3, g, Aq, m, mu, k, k_on);
    for (Py_ssize_t i = 0; i < n; ++i) yt[i] = y[i] + h * k3[i];
    NCIL(rhs)(c, d, yt, k4, g, Aq, m, mu, k, k_on);
    for (Py_ssize_t i = 0; i < n; ++i)
        y[i] = y[i] + (h / 6.0) * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i]);
}

/* the block's run for dimension d: called with d a constant for d = 2, 4, 8, 16 (the
   loops over the state unroll; the arithmetic, hence every lane's result, is the same;
   every d <= 16 was measured to build in ~7 min, so only these) */
NCI_INLINE void NCIL(run_block_d)(const nci_ctx* c, nci_block* B, const Py_ssize_t d)
{
    const Py_ssize_t n = c->model == NCI_M1 ? 2 * d : d;
    nci_vd* q = B->work;                        /* the state y = (q, v) or q */
    nci_vd* v = q + d;
    nci_vd* g = q + 2 * d;
    nci_vd* Aq = g + d;
    nci_vd* yt = Aq + d;                        /* RK4: yt (2d), K (8d) */
    nci_vd* K = yt + 2 * d;
    const nci_vd m = NCIL(load)(B->m), mu = NCIL(load)(B->mu);
    const nci_vd k = NCIL(load)(B->k);
    const nci_vl k_on = k != 0.0;
    nci_vd cc[3], aa[3], tt[3];
    nci_vl live;                                /* all ones: the lane still runs */
    int n_alive = NCI_NL;
    Py_ssize_t last = 0;                        /* steps done by the running lanes */
    for (int s = 0; s < 3; ++s) {
        cc[s] = NCIL(load)(B->c[s]);
        aa[s] = NCIL(load)(B->a[s]);
        tt[s] = NCIL(load)(B->tau[s]);
    }
    for (int l = 0; l < NCI_NL; ++l) {
        live[l] = -1;
        B->status[l] = NC_ST_OK;
        B->done[l] = 0;
        for (Py_ssize_t i = 0; i < n; ++i) q[i][l] = B->y[l][i];
    }
    if (c->steps > 0 && c->scheme != NCI_RK4) NCIL(grad)(c, d, q, g, Aq, k, k_on); /* _split_init */
    for (Py_ssize_t s = 1; s <= c->steps; ++s) {
        if ((s & 63) == 0 && c->cancel != NULL && *(const volatile int*) c->cancel) {
            for (int l = 0; l < NCI_NL; ++l)
                if (live[l]) B->status[l] = NC_ST_INTERRUPTED;
            break;
        }
        if (c->scheme == NCI_LIE) {             /* _m1_lie: v = c v - a g; q += h v; ∇V */
            for (Py_ssize_t i = 0; i < d; ++i) v[i] = cc[0] * v[i] - aa[0] * g[i];
            for (Py_ssize_t i = 0; i < d; ++i) q[i] = q[i] + tt[0] * v[i];
            NCIL(grad)(c, d, q, g, Aq, k, k_on);
        } else if (c->scheme == NCI_STRANG) {
            NCIL(strang)(c, d, q, v, g, Aq, cc[0], aa[0], tt[0], k, k_on);
        } else if (c->scheme == NCI_GD) {       /* M4 explicit Euler: q -= (h/μ) g; ∇V */
            for (Py_ssize_t i = 0; i < d; ++i) q[i] = q[i] - aa[0] * g[i];
            NCIL(grad)(c, d, q, g, Aq, k, k_on);
        } else if (c->scheme == NCI_RK4) {
            NCIL(rk4)(c, d, n, q, K, yt, g, Aq, tt[0], m, mu, k, k_on);
        } else {                                /* Yoshida: Strang at w1 h, w0 h, w1 h */
            NCIL(strang)(c, d, q, v, g, Aq, cc[0], aa[0], tt[0], k, k_on);
            NCIL(strang)(c, d, q, v, g, Aq, cc[1], aa[1], tt[1], k, k_on);
            NCIL(strang)(c, d, q, v, g, Aq, cc[2], aa[2], tt[2], k, k_on);
        }
        /* _finite: x * 0 is 0 for a finite x, NaN for inf and NaN; z is 0 in a lane
           exactly when its whole state is finite (a NaN term makes the sum NaN) */
        nci_vd z = q[0] * 0.0;
        for (Py_ssize_t i = 1; i < n; ++i) z = z + q[i] * 0.0;
        const nci_vl bad = (z != 0.0) & live;
        long long any = 0;
        for (int l = 0; l < NCI_NL; ++l) any |= bad[l];
        last = s;
        if (any) {
            for (int l = 0; l < NCI_NL; ++l) {
                if (!bad[l]) continue;          /* stop this lane here, as the scalar loop */
                live[l] = 0;
                --n_alive;
                B->done[l] = s;
                B->status[l] = NC_ST_NONFINITE_STATE;
                for (Py_ssize_t i = 0; i < n; ++i) B->y[l][i] = q[i][l];
            }
            if (n_alive == 0) break;
        }
    }
    for (int l = 0; l < NCI_NL; ++l) {
        if (!live[l]) continue;
        B->done[l] = last;
        for (Py_ssize_t i = 0; i < n; ++i) B->y[l][i] = q[i][l];
    }
}

static void NCIL(run_block)(const nci_ctx* c, nci_block* B)
{
    switch (c->d) {
#define NCI_CASE(D) case D: NCIL(run_block_d)(c, B, D); return;
    NCI_CASE(2) NCI_CASE(4) NCI_CASE(8) NCI_CASE(16)
#undef NCI_CASE
    default: NCIL(run_block_d)(c, B, c->d);
    }
}
