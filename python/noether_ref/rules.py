"""NumPy twin of pyx/rules.pyx: the same rules, the same loop, the same random draws.

``train(rule, grad, q0, steps, ...)`` with ``rule`` a dict ``{"name": "SGD", **params}``
(the parameters of the noether_core rule of that name) and ``grad(q, rows) -> (f, g)``.
Minibatches: each step draws ``batch_size`` rows by a partial Fisher–Yates shuffle of the
identity, consuming ``batch_size`` values of ``rng.random()`` — exactly the doubles the
compiled loop takes from the same bit generator.
"""
import math

import numpy as np


def draw_batch(rng, n_data, batch_size):
    perm = np.arange(n_data)
    for i in range(batch_size):
        j = i + int(rng.random() * (n_data - i))
        j = min(j, n_data - 1)
        perm[i], perm[j] = perm[j], perm[i]
    return perm[:batch_size].copy()


def _lerp(a, b, w):
    return a + w * (b - a) if w < 0.5 else b - (b - a) * (1.0 - w)


def init_state(rule, d, n_parts=1):
    name = rule["name"]
    if name == "SGD":
        return {"momentum_buffer": np.zeros(d), "has_buffer": False}
    if name == "RMSprop":
        return {"square_avg": np.zeros(d), "momentum_buffer": np.zeros(d),
                "grad_avg": np.zeros(d), "step": 0}
    if name in ("Adam", "AdamW"):
        return {"exp_avg": np.zeros(d), "exp_avg_sq": np.zeros(d),
                "max_exp_avg_sq": np.zeros(d), "step": 0}
    if name == "ScalarRMSProp":
        return {"initialised": False, "G": np.zeros(n_parts)}
    if name == "MirrorDescent":
        return {}
    raise ValueError(name)


def step(rule, q, g, st, partition=None):
    """One update of q (in place) and of the state dict ``st``."""
    name = rule["name"]
    if name == "SGD":
        lr, mom = rule["lr"], rule["momentum"]
        damp, wd = rule.get("dampening", 0.0), rule.get("weight_decay", 0.0)
        d = g + wd * q if wd != 0.0 else g.copy()
        if mom != 0.0:
            buf = st["momentum_buffer"]
            if not st["has_buffer"]:
                buf[:] = d
            else:
                buf[:] = buf * mom + (1.0 - damp) * d
            st["has_buffer"] = True
            d = d + mom * buf if rule.get("nesterov", False) else buf.copy()
        q += (-lr) * d
    elif name == "RMSprop":
        lr, alpha, eps = rule["lr"], rule.get("alpha", 0.99), rule.get("eps", 1e-8)
        wd, mom = rule.get("weight_decay", 0.0), rule.get("momentum", 0.0)
        st["step"] += 1
        gi = g + wd * q if wd != 0.0 else g.copy()
        sq = st["square_avg"]
        sq *= alpha
        sq += ((1.0 - alpha) * gi) * gi
        if rule.get("centered", False):
            ga = st["grad_avg"]
            ga[:] = _lerp(ga, gi, 1.0 - alpha)
            avg = np.sqrt(sq + (-1.0 * ga) * ga)
        else:
            avg = np.sqrt(sq)
        avg = avg + eps
        if mom > 0.0:
            buf = st["momentum_buffer"]
            buf[:] = buf * mom + gi / avg
            q += (-lr) * buf
        else:
            q += ((-lr) * gi) / avg
    elif name in ("Adam", "AdamW"):
        lr = rule["lr"]
        b1, b2 = rule.get("betas", (0.9, 0.999))
        eps = rule.get("eps", 1e-8)
        wd = rule.get("weight_decay", 1e-2 if name == "AdamW" else 0.0)
        st["step"] += 1
        t = float(st["step"])
        bc1, bc2 = 1.0 - b1 ** t, 1.0 - b2 ** t
        step_size, bc2_sqrt = lr / bc1, math.sqrt(bc2)
        gi = g.copy()
        if wd != 0.0:
            if name == "AdamW":
                q *= 1.0 - lr * wd
            else:
                gi = g + wd * q
        m1, m2, mx = st["exp_avg"], st["exp_avg_sq"], st["max_exp_avg_sq"]
        m1[:] = _lerp(m1, gi, 1.0 - b1)
        m2 *= b2
        m2 += ((1.0 - b2) * gi) * gi
        if rule.get("amsgrad", False):
            np.maximum(mx, m2, out=mx)
            den = np.sqrt(mx) / bc2_sqrt + eps
        else:
            den = np.sqrt(m2) / bc2_sqrt + eps
        q += ((-step_size) * m1) / den
    elif name == "ScalarRMSProp":
        lr, rho, eps = rule["lr"], rule.get("rho", 0.99), rule.get("eps", 1e-8)
        G0, wd = rule.get("G0"), rule.get("weight_decay", 0.0)
        parts = partition if partition is not None else [np.arange(len(q))]
        # project=True: the scale-block parts (all but a trailing "rest" part, which the
        # caller flags with rule["n_projected"]) are renormalised after their step
        nproj = rule.get("n_projected", 0) if rule.get("project", False) else 0
        G = st["G"]
        for p, idx in enumerate(parts):
            d = g[idx] + wd * q[idx] if wd != 0.0 else g[idx]
            n2 = float(d @ d)
            if not st["initialised"]:
                G[p] = n2 if G0 is None else G0
            q[idx] = q[idx] - (lr / math.sqrt(G[p] + eps)) * d
            if p < nproj:
                nrm = float(np.linalg.norm(q[idx]))
                if nrm > 0.0:
                    q[idx] = q[idx] / nrm
            G[p] = rho * G[p] + (1.0 - rho) * n2
        st["initialised"] = True
    elif name == "MirrorDescent":
        lr, wd = rule["lr"], rule.get("weight_decay", 0.0)
        d = g + wd * q if wd != 0.0 else g
        mirror = rule.get("mirror", "euclidean")
        if mirror == "euclidean":
            q -= lr * d
        elif mirror == "diagonal":
            q -= lr * d / np.asarray(rule["D"])
        elif mirror == "pnorm":
            p = rule["p"]
            y = np.sign(q) * np.abs(q) ** (p - 1.0) - lr * d
            q[:] = np.sign(y) * np.abs(y) ** (1.0 / (p - 1.0))
        elif mirror == "entropy":
            q *= np.exp(-lr * d)
        else:
            raise ValueError(mirror)
    else:
        raise ValueError(name)


def train(rule, grad, q0, steps, *, record_every=1, n_data=0, batch_size=None, rng=None,
          state=None, partition=None, full_grad=None):
    """Reference loop.  Returns a dict: steps, q, loss, grad_norm2, q_final, state.

    ``full_grad(q)`` evaluates the terminal row on the full data (defaults to
    ``grad(q, None)``).
    """
    q = np.array(q0, dtype=float)
    n_parts = 1 if partition is None else len(partition)
    st = init_state(rule, len(q), n_parts) if state is None else state
    rows_q, rows_f, rows_g2, rows_n = [], [], [], []
    for n in range(steps):
        rows = draw_batch(rng, n_data, batch_size) if batch_size else None
        f, g = grad(q, rows)
        if not (np.isfinite(f) and np.all(np.isfinite(g))):
            break
        if n % record_every == 0:
            rows_q.append(q.copy())
            rows_f.append(f)
            rows_g2.append(float(g @ g))
            rows_n.append(n)
        step(rule, q, g, st, partition)
    else:
        if steps % record_every == 0:
            f, g = (full_grad or (lambda x: grad(x, None)))(q)
            rows_q.append(q.copy())
            rows_f.append(f)
            rows_g2.append(float(g @ g))
            rows_n.append(steps)
    return {"steps": np.array(rows_n), "q": np.array(rows_q), "loss": np.array(rows_f),
            "grad_norm2": np.array(rows_g2), "q_final": q, "state": st}
