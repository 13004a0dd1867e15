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
                          const nci_vl k_on, const int kmode)
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
    /* kmode (constant over a block): NCI_K_NONE no lane adds k q, NCI_K_ALL every lane
       does (the select would pick g + k q everywhere), NCI_K_MIXED the bit select */
    if (kmode == NCI_K_ALL) {
        for (Py_ssize_t i = 0; i < d; ++i) g[i] = g[i] + k * q[i];
    } else if (kmode == NCI_K_MIXED) {
        for (Py_ssize_t i = 0; i < d; ++i) {
            const nci_vd gk = g[i] + k * q[i];
            g[i] = (nci_vd) (((nci_vl) gk & k_on) | ((nci_vl) g[i] & ~k_on));
        }
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
                            const nci_vd tau, const nci_vd k, const nci_vl k_on,
                            const int kmode)
{
    for (Py_ssize_t i = 0; i < d; ++i) v[i] = cc * v[i] - aa * g[i];
    for (Py_ssize_t i = 0; i < d; ++i) q[i] = q[i] + tau * v[i];
    NCIL(grad)(c, d, q, g, Aq, k, k_on, kmode);
    for (Py_ssize_t i = 0; i < d; ++i) v[i] = cc * (v[i] - aa * g[i]);
}

/* _rhs for M2 (Eq. 13 exact, or reduced in the lanes with red = 1) at yv = (r, r', u, w):
   g = ∇f(u) (no k u: k enters through the radial equation), ww = 0 + w0² + ...,
   cpl = 0 (reduced) or 2 r'/r, dy = (r', -γ r' + (ww - k/m) r, w,
   -(γ + cpl) w - g/(m r r) - ww u) */
NCI_INLINE void NCIL(rhs2)(const nci_ctx* c, const Py_ssize_t d, const nci_vd* yv,
                          nci_vd* dy, nci_vd* g, nci_vd* Aq, const nci_vd m, const nci_vd gam,
                          const nci_vd km, const nci_vl red)
{
    const nci_vd zero = {0.0};
    const nci_vl off = red & 0;
    const nci_vd r = yv[0], rd = yv[1];
    const nci_vd* u = yv + 2;
    const nci_vd* w = yv + 2 + d;
    NCIL(grad)(c, d, u, g, Aq, zero, off, NCI_K_NONE);
    nci_vd ww = zero;
    for (Py_ssize_t i = 0; i < d; ++i) ww = ww + w[i] * w[i];
    const nci_vd cp = 2.0 * rd / r;
    const nci_vd cpl = (nci_vd) (((nci_vl) zero & red) | ((nci_vl) cp & ~red));
    dy[0] = rd;
    dy[1] = -gam * rd + (ww - km) * r;
    const nci_vd ng = -(gam + cpl), mrr = m * r * r;
    for (Py_ssize_t i = 0; i < d; ++i) {
        dy[2 + i] = w[i];
        dy[2 + d + i] = ng * w[i] - g[i] / mrr - ww * u[i];
    }
}

/* _rhs for M1 (dy = (v, -(μ v + ∇V)/m)) and M4 (dy = -∇V/μ) at the state yv */
NCI_INLINE void NCIL(rhs)(const nci_ctx* c, const Py_ssize_t d, const nci_vd* yv, nci_vd* dy,
                         nci_vd* g, nci_vd* Aq, const nci_vd m, const nci_vd mu,
                         const nci_vd k, const nci_vl k_on, const int kmode)
{
    NCIL(grad)(c, d, yv, g, Aq, k, k_on, kmode);
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
#define NCI_RHS(Y, DY) do { \
        if (c->model == NCI_M2) NCIL(rhs2)(c, d, Y, DY, g, Aq, m, gam, km, red); \
        else NCIL(rhs)(c, d, Y, DY, g, Aq, m, mu, k, k_on, kmode); } while (0)
NCI_INLINE void NCIL(rk4)(const nci_ctx* c, const Py_ssize_t d, Py_ssize_t n, nci_vd* y,
                         nci_vd* K, nci_vd* yt,
                         nci_vd* g, nci_vd* Aq, const nci_vd h, const nci_vd m,
                         const nci_vd mu, const nci_vd k, const nci_vl k_on,
                         const nci_vd gam, const nci_vd km, const nci_vl red,
                         const int kmode)
{
    nci_vd *k1 = K, *k2 = K + n, *k3 = K + 2 * n, *k4 = K + 3 * n;
    NCI_RHS(y, k1);
    for (Py_ssize_t i = 0; i < n; ++i) yt[i] = y[i] + 0.5 * h * k1[i];
    NCI_RHS(yt, k2);
    for (Py_ssize_t i = 0; i < n; ++i) yt[i] = y[i] + 0.5 * h * k2[i];
    NCI_RHS(yt, k3);
    for (Py_ssize_t i = 0; i < n; ++i) yt[i] = y[i] + h * k3[i];
    NCI_RHS(yt, k4);
    for (Py_ssize_t i = 0; i < n; ++i)
        y[i] = y[i] + (h / 6.0) * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i]);
}
#undef NCI_RHS

/* bitwise select: x where the mask is set, else y */
NCI_INLINE nci_vd NCIL(sel)(const nci_vl mask, const nci_vd x, const nci_vd y)
{
    return (nci_vd) (((nci_vl) x & mask) | ((nci_vl) y & ~mask));
}

/* M2's flows (pyx/integrators.pyx _m2_D, _m2_B, _m2_A, _m2_C), lane-wise, y = (r, r', u, w).
   D: r' = c r'; w = c w */
NCI_INLINE void NCIL(m2_D)(const Py_ssize_t d, nci_vd* y, const nci_vd cc)
{
    y[1] = cc * y[1];
    for (Py_ssize_t i = 0; i < d; ++i) y[2 + d + i] = cc * y[2 + d + i];
}

/* B: a = τ/(m r r); gu = 0 + g0 u0 + ...; w -= a (g - gu u) */
NCI_INLINE void NCIL(m2_B)(const Py_ssize_t d, nci_vd* y, const nci_vd* g, const nci_vd tau,
                          const nci_vd m)
{
    const nci_vd a = tau / (m * y[0] * y[0]);
    nci_vd gu = {0.0};
    for (Py_ssize_t i = 0; i < d; ++i) gu = gu + g[i] * y[2 + i];
    for (Py_ssize_t i = 0; i < d; ++i) y[2 + d + i] = y[2 + d + i] - a * (g[i] - gu * y[2 + i]);
}

/* A: k > 0 lanes the radial oscillator (rn = r cs + r' sn/om; r' = -r om sn + r' cs), the
   others the drift rn = r + τ r'; then (exact model) w *= (r/rn)², π = m r² w fixed */
NCI_INLINE void NCIL(m2_A)(const Py_ssize_t d, nci_vd* y, const nci_vd tau, const nci_vd om,
                          const nci_vd cs, const nci_vd sn, const nci_vl kpos,
                          const nci_vl red)
{
    const nci_vd r = y[0], rd = y[1];
    const nci_vd rn = NCIL(sel)(kpos, r * cs + rd * sn / om, r + tau * rd);
    y[1] = NCIL(sel)(kpos, -r * om * sn + rd * cs, rd);
    y[0] = rn;
    const nci_vd s = (r / rn) * (r / rn);
    for (Py_ssize_t i = 0; i < d; ++i)
        y[2 + d + i] = NCIL(sel)(red, y[2 + d + i], s * y[2 + d + i]);
}

/* C: ww = 0 + w0² + ...; r' += τ r ww; where ww > 0 the great-circle rotation of (u, w)
   by the angle om τ, om = sqrt(ww) (cos and sin by the C library, lane by lane, as the
   scalar code calls them); then u /= |u|, w -= <u, w> u; g = ∇f(u) */
NCI_INLINE void NCIL(m2_C)(const nci_ctx* c, const Py_ssize_t d, nci_vd* y, nci_vd* g,
                          nci_vd* Aq, const nci_vd tau)
{
    nci_vd* u = y + 2;
    nci_vd* w = y + 2 + d;
    const nci_vd zero = {0.0};                 /* the scalar sums start from +0.0 */
    nci_vd ww = zero, nu = zero, uw = zero;
    for (Py_ssize_t i = 0; i < d; ++i) ww = ww + w[i] * w[i];
    y[1] = y[1] + tau * y[0] * ww;
    const nci_vl rot = ww > 0.0;
    long long any = 0;
    for (int l = 0; l < NCI_NL; ++l) any |= rot[l];
    if (any) {
        nci_vd om, cs, sn;
        for (int l = 0; l < NCI_NL; ++l) {
            if (rot[l]) {
                om[l] = sqrt(ww[l]);
                cs[l] = cos(om[l] * tau[l]);
                sn[l] = sin(om[l] * tau[l]);
            } else {
                om[l] = 1.0;
                cs[l] = 1.0;
                sn[l] = 0.0;
            }
        }
        for (Py_ssize_t i = 0; i < d; ++i) {
            const nci_vd ui = u[i], ei = w[i] / om;
            u[i] = NCIL(sel)(rot, ui * cs + ei * sn, ui);
            w[i] = NCIL(sel)(rot, om * (ei * cs - ui * sn), w[i]);
        }
    }
    for (Py_ssize_t i = 0; i < d; ++i) nu = nu + u[i] * u[i];
    for (int l = 0; l < NCI_NL; ++l) nu[l] = sqrt(nu[l]);
    for (Py_ssize_t i = 0; i < d; ++i) u[i] = u[i] / nu;
    for (Py_ssize_t i = 0; i < d; ++i) uw = uw + u[i] * w[i];
    for (Py_ssize_t i = 0; i < d; ++i) w[i] = w[i] - uw * u[i];
    NCIL(grad)(c, d, u, g, Aq, zero, rot & 0, NCI_K_NONE);
}

/* _m2_lie (s = 0, every flow at h) and _m2_strang's stage s (D B A at half its step, C at
   the whole, A B D) */
NCI_INLINE void NCIL(m2_stage)(const nci_ctx* c, const Py_ssize_t d, nci_vd* y, nci_vd* g,
                              nci_vd* Aq, const nci_vd cc, const nci_vd ta, const nci_vd tc,
                              const nci_vd om, const nci_vd cs, const nci_vd sn,
                              const nci_vd m, const nci_vl kpos, const nci_vl red,
                              const int strang)
{
    NCIL(m2_D)(d, y, cc);
    NCIL(m2_B)(d, y, g, ta, m);
    NCIL(m2_A)(d, y, ta, om, cs, sn, kpos, red);
    NCIL(m2_C)(c, d, y, g, Aq, tc);
    if (strang) {
        NCIL(m2_A)(d, y, ta, om, cs, sn, kpos, red);
        NCIL(m2_B)(d, y, g, ta, m);
        NCIL(m2_D)(d, y, cc);
    }
}

/* the block's run for dimension d: called with d a constant for d = 2, 4, 8, 16 (the
   loops over the state unroll; the arithmetic, hence every lane's result, is the same;
   every d <= 16 was measured to build in ~7 min, so only these) */
NCI_INLINE void NCIL(run_block_d)(const nci_ctx* c, nci_block* B, const Py_ssize_t d)
{
    const Py_ssize_t n = c->model == NCI_M1 ? 2 * d : c->model == NCI_M2 ? 2 * d + 2 : d;
    nci_vd* q = B->work;                        /* the state y = (q, v), q or (r, r', u, w) */
    nci_vd* v = q + d;
    nci_vd* g = q + n;
    nci_vd* Aq = g + d;
    nci_vd* yt = Aq + d;                        /* RK4: yt (n), K (4n) */
    nci_vd* K = yt + n;
    const nci_vd m = NCIL(load)(B->m), mu = NCIL(load)(B->mu);
    const nci_vd k = NCIL(load)(B->k);
    const nci_vl k_on = k != 0.0;
    int n_on = 0;
    for (int l = 0; l < NCI_NL; ++l) n_on += k_on[l] != 0;
    const int kmode = n_on == 0 ? NCI_K_NONE : n_on == NCI_NL ? NCI_K_ALL : NCI_K_MIXED;
    const nci_vd gam = NCIL(load)(B->gam), km = NCIL(load)(B->km), om = NCIL(load)(B->om);
    const nci_vl kpos = k > 0.0, red = NCIL(load)(B->red) != 0.0;
    const int m2 = c->model == NCI_M2;
    nci_vd cc[3], aa[3], tt[3], cs[3], sn[3];
    nci_vl live;                                /* all ones: the lane still runs */
    int n_alive = NCI_NL;
    Py_ssize_t last = 0;                        /* steps done by the running lanes */
    for (int s = 0; s < 3; ++s) {
        cc[s] = NCIL(load)(B->c[s]);
        aa[s] = NCIL(load)(B->a[s]);
        tt[s] = NCIL(load)(B->tau[s]);
        cs[s] = NCIL(load)(B->cs[s]);
        sn[s] = NCIL(load)(B->sn[s]);
    }
    for (int l = 0; l < NCI_NL; ++l) {
        live[l] = -1;
        B->status[l] = NC_ST_OK;
        B->done[l] = 0;
        for (Py_ssize_t i = 0; i < n; ++i) q[i][l] = B->y[l][i];
    }
    if (c->steps > 0 && c->scheme != NCI_RK4) {  /* _split_init (M2: ∇f(u), no k u) */
        if (m2) NCIL(grad)(c, d, q + 2, g, Aq, k, k_on & 0, NCI_K_NONE);
        else NCIL(grad)(c, d, q, g, Aq, k, k_on, kmode);
    }
    for (Py_ssize_t s = 1; s <= c->steps; ++s) {
        if ((s & 63) == 0 && c->cancel != NULL && *(const volatile int*) c->cancel) {
            for (int l = 0; l < NCI_NL; ++l)
                if (live[l]) B->status[l] = NC_ST_INTERRUPTED;
            break;
        }
        if (m2 && c->scheme != NCI_RK4) {       /* _m2_lie, _m2_strang, Yoshida's jump */
            const int ns = c->scheme == NCI_YOSHIDA ? 3 : 1;
            for (int j = 0; j < ns; ++j)
                NCIL(m2_stage)(c, d, q, g, Aq, cc[j], aa[j], tt[j], om, cs[j], sn[j], m,
                               kpos, red, c->scheme != NCI_LIE);
        } else if (c->scheme == NCI_LIE) {      /* _m1_lie: v = c v - a g; q += h v; ∇V */
            for (Py_ssize_t i = 0; i < d; ++i) v[i] = cc[0] * v[i] - aa[0] * g[i];
            for (Py_ssize_t i = 0; i < d; ++i) q[i] = q[i] + tt[0] * v[i];
            NCIL(grad)(c, d, q, g, Aq, k, k_on, kmode);
        } else if (c->scheme == NCI_STRANG) {
            NCIL(strang)(c, d, q, v, g, Aq, cc[0], aa[0], tt[0], k, k_on, kmode);
        } else if (c->scheme == NCI_GD) {       /* M4 explicit Euler: q -= (h/μ) g; ∇V */
            for (Py_ssize_t i = 0; i < d; ++i) q[i] = q[i] - aa[0] * g[i];
            NCIL(grad)(c, d, q, g, Aq, k, k_on, kmode);
        } else if (c->scheme == NCI_RK4) {
            NCIL(rk4)(c, d, n, q, K, yt, g, Aq, tt[0], m, mu, k, k_on, gam, km, red, kmode);
        } else {                                /* Yoshida: Strang at w1 h, w0 h, w1 h */
            NCIL(strang)(c, d, q, v, g, Aq, cc[0], aa[0], tt[0], k, k_on, kmode);
            NCIL(strang)(c, d, q, v, g, Aq, cc[1], aa[1], tt[1], k, k_on, kmode);
            NCIL(strang)(c, d, q, v, g, Aq, cc[2], aa[2], tt[2], k, k_on, kmode);
        }
        /* _finite: x * 0 is 0 for a finite x, NaN for inf and NaN; z is 0 in a lane
           exactly when its whole state is finite (a NaN term makes the sum NaN) */
        /* the sum of the state is non-finite in every lane whose state is (an inf or a
           NaN term makes it inf or NaN); it may also overflow with a finite state, so a
           flagged lane is then checked exactly: x * 0 summed is 0 exactly when finite */
        nci_vd z = q[0];
        for (Py_ssize_t i = 1; i < n; ++i) z = z + q[i];
        nci_vl nonfinite = ((z * 0.0) != 0.0) & live;
        long long maybe = 0;
        for (int l = 0; l < NCI_NL; ++l) maybe |= nonfinite[l];
        if (maybe) {
            z = q[0] * 0.0;
            for (Py_ssize_t i = 1; i < n; ++i) z = z + q[i] * 0.0;
            nonfinite = (z != 0.0) & live;
        }
        /* M2: then r <= 0 (NC_ST_RADIUS), as _fixed_loop checks after _finite */
        const nci_vl bad = m2 ? nonfinite | ((q[0] <= 0.0) & live) : nonfinite;
        long long any = 0;
        for (int l = 0; l < NCI_NL; ++l) any |= bad[l];
        last = s;
        if (any) {
            for (int l = 0; l < NCI_NL; ++l) {
                if (!bad[l]) continue;          /* stop this lane here, as the scalar loop */
                live[l] = 0;
                --n_alive;
                B->done[l] = s;
                B->status[l] = nonfinite[l] ? NC_ST_NONFINITE_STATE : NC_ST_RADIUS;
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
