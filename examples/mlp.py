"""Train a two-layer MLP (Linear with a fused ReLU -> Linear) on three interleaved spirals with linear.Linear and Adam.

    python examples/mlp.py                            # numpy backend
    LINEAR_BACKEND=emulate python examples/mlp.py     # our CUDA kernels, run on the CPU
"""
import numpy as np

import linear


def spirals(points_per_class, rng, classes=3, noise=0.2):
    """2-D points on `classes` interleaved spiral arms; the label of a point is its arm."""
    t = rng.uniform(0.05, 1.0, (classes, points_per_class))  # distance from the centre
    arm = np.arange(classes)[:, None]
    angle = 2 * np.pi * arm / classes + 8.0 * t + rng.normal(0, noise, t.shape)
    x = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=-1).reshape(-1, 2)
    y = np.repeat(np.arange(classes), points_per_class)
    return x.astype(np.float32), y


def softmax_cross_entropy(logits, labels, xp):
    """The batch-mean cross-entropy and its gradient dL/dlogits (the 1/B of the mean lives in it)."""
    shifted = logits - logits.max(axis=1, keepdims=True)  # exp never overflows
    log_probs = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    rows = xp.arange(len(labels))
    loss = -log_probs[rows, labels].mean()
    dlogits = xp.exp(log_probs)
    dlogits[rows, labels] -= 1
    return loss, dlogits / len(labels)


def train(backend=None, seed=0, steps=500, hidden=64, lr=0.02, verbose=True):
    """Train on 3000 spiral points; return the accuracy on 1500 held-out points."""
    rng = np.random.default_rng(seed)
    layer1 = linear.Linear(2, hidden, backend=backend, seed=seed, activation="relu")  # ReLU in the GEMM's epilogue
    layer2 = linear.Linear(hidden, 3, backend=backend, seed=seed + 1)
    optimizer = linear.optim.Adam([*layer1.parameters(), *layer2.parameters()], lr=lr)
    xp = layer1.xp  # numpy, or cupy for backend="cuda"
    x_train, y_train = (xp.asarray(a) for a in spirals(1000, rng))
    x_test, y_test = (xp.asarray(a) for a in spirals(500, rng))

    for step in range(steps):
        h = layer1(x_train)  # max(X·W1 + b1, 0), one kernel
        logits = layer2(h)
        loss, dlogits = softmax_cross_entropy(logits, y_train, xp)
        optimizer.zero_grad()
        dh = layer2.backward(dlogits)
        layer1.backward(dh, need_dx=False)  # through the ReLU: dZ1 = dH ⊙ (H > 0)
        optimizer.step()
        if verbose and step % 100 == 0:
            print(f"step {step:4d}  loss {float(loss):.4f}")

    predictions = layer2(layer1(x_test)).argmax(axis=1)
    accuracy = float((predictions == y_test).mean())
    if verbose:
        print(f"test accuracy after {steps} steps: {accuracy:.1%}")
    return accuracy


if __name__ == "__main__":
    train()
