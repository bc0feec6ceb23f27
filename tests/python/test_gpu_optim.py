"""lightseq.optim.Adam / AdamW against torch.optim.Adam / AdamW: many steps over tensors of sizes
1, 3, 4097, 5000 and a matrix, fp32 / fp16 / bf16 parameters (lightseq keeps fp32 master weights;
the reference is torch's optimizer on fp32 copies fed the same 16-bit gradients), L2 and decoupled
weight decay, clipping, param groups with an LR schedule, state_dict both ways, GradScaler's
skipped fp16 overflow step, zero_grad(set_to_none=False) and CUDA graph capture."""
import copy

import pytest
import torch

import lightseq

pytestmark = pytest.mark.gpu

SHAPES = [(1,), (3,), (4097,), (5000,), (64, 33)]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype).cuda()) for s in SHAPES]


def grads(n_steps, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[(torch.randn(s, generator=g) * 0.1).to(dtype).cuda() for s in SHAPES] for _ in range(n_steps)]


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def reference(ps, torch_cls, **kw):
    ref = [torch.nn.Parameter(p.detach().float().clone()) for p in ps]
    return ref, torch_cls(ref, **kw)


@pytest.mark.parametrize("precision", list(DTYPES))
@pytest.mark.parametrize("kind", ["adamw", "adam"])
def test_many_steps_match_torch(precision, kind):
    dtype = DTYPES[precision]
    kw = dict(lr=3e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.05)
    ps = params(dtype)
    ours = (lightseq.optim.AdamW if kind == "adamw" else lightseq.optim.Adam)(ps, **kw)
    ref, theirs = reference(ps, torch.optim.AdamW if kind == "adamw" else torch.optim.Adam, **kw)
    for gs in grads(30, dtype):
        for p, q, g in zip(ps, ref, gs):
            p.grad = g.clone()
            q.grad = g.float()
        ours.step()
        theirs.step()
    for i, (p, q) in enumerate(zip(ps, ref)):
        master = ours.state[p].get("master_param", p)
        assert master.dtype == torch.float32
        assert rel(master, q) <= 1e-5, (i, rel(master, q))
        assert torch.equal(p.detach(), q.detach().to(dtype)) or rel(p, q) <= {torch.float32: 1e-5,
                                                                               torch.float16: 1e-3,
                                                                               torch.bfloat16: 8e-3}[dtype]
        assert rel(ours.state[p]["exp_avg"], theirs.state[q]["exp_avg"]) <= 1e-5
        assert rel(ours.state[p]["exp_avg_sq"], theirs.state[q]["exp_avg_sq"]) <= 1e-5
    assert int(ours.state_dict()["state"][0]["step"]) == 30


def test_clipping_groups_and_an_lr_schedule_match_torch():
    ps = params(torch.float32, seed=3)
    ours = lightseq.optim.AdamW(ps, lr=1e-2, max_grad_norm=0.5)
    ref, theirs = reference(ps, torch.optim.AdamW, lr=1e-2)
    for gs in grads(10, torch.float32, seed=4):
        for p, q, g in zip(ps, ref, gs):
            p.grad, q.grad = g.clone() * 10, g.clone() * 10
        torch.nn.utils.clip_grad_norm_(ref, 0.5)
        ours.step()
        theirs.step()
    for p, q in zip(ps, ref):
        assert rel(p, q) <= 1e-5
    # two groups, different lr and weight decay, under a schedule
    ps = params(torch.float32, seed=5)
    groups = lambda xs: [{"params": xs[:2], "lr": 1e-2, "weight_decay": 0.0}, {"params": xs[2:]}]  # noqa: E731
    ours = lightseq.optim.AdamW(groups(ps), lr=3e-3, weight_decay=0.1)
    ref, _ = reference(ps, torch.optim.AdamW)
    theirs = torch.optim.AdamW(groups(ref), lr=3e-3, weight_decay=0.1)
    scheds = [torch.optim.lr_scheduler.StepLR(o, 2, gamma=0.5) for o in (ours, theirs)]
    for gs in grads(7, torch.float32, seed=6):
        for p, q, g in zip(ps, ref, gs):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
        for s in scheds:
            s.step()
    for p, q in zip(ps, ref):
        assert rel(p, q) <= 1e-5


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_state_dict_round_trips_both_ways(precision):
    dtype = DTYPES[precision]
    kw = dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=0.01)
    ps = params(dtype, seed=7)
    ours = lightseq.optim.AdamW(ps, **kw)
    data = grads(8, dtype, seed=8)
    for gs in data[:4]:
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        ours.step()
    # ours -> torch.optim.AdamW on fp32 copies of the master weights: both continue alike
    ref = [torch.nn.Parameter(ours.state[p].get("master_param", p).detach().float().clone()) for p in ps]
    theirs = torch.optim.AdamW(ref, **kw)
    theirs.load_state_dict(ours.state_dict())
    # torch -> a fresh lightseq.optim.AdamW on copies of the parameters
    ps2 = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    again = lightseq.optim.AdamW(ps2, **kw)
    again.load_state_dict(copy.deepcopy(ours.state_dict()))
    for gs in data[4:]:
        for p, p2, q, g in zip(ps, ps2, ref, gs):
            p.grad, p2.grad, q.grad = g.clone(), g.clone(), g.float()
        ours.step()
        again.step()
        theirs.step()
    for p, p2, q in zip(ps, ps2, ref):
        assert torch.equal(p, p2)  # a restored optimizer continues bit for bit
        assert rel(ours.state[p].get("master_param", p), q) <= 1e-5
    sd = theirs.state_dict()  # torch's own state loads into ours
    third = lightseq.optim.AdamW([torch.nn.Parameter(q.detach().to(dtype).clone()) for q in ref], **kw)
    third.load_state_dict(sd)
    assert int(third.state_dict()["state"][0]["step"]) == 8


def test_gradscaler_skips_an_overflow_step():
    """fp32 parameters under fp16 autocast (torch's AMP recipe): GradScaler unscales the arena's
    gradients in place and skips step() on an inf."""
    ps = params(torch.float32, seed=9)
    ours = lightseq.optim.AdamW(ps, lr=1e-2)
    scaler = torch.amp.GradScaler("cuda", init_scale=1024.0)
    scaler.scale(torch.ones((), device="cuda"))  # as scaler.scale(loss).backward() would: its scale exists
    for p, g in zip(ps, grads(1, torch.float32, seed=10)[0]):
        p.grad = g * 1024
    scaler.step(ours)
    scaler.update()
    before = [p.detach().clone() for p in ps]
    moments = [ours.state[p]["exp_avg"].clone() for p in ps]
    for i, p in enumerate(ps):
        p.grad.fill_(float("inf") if i == 2 else 1.0)
    scaler.step(ours)
    scaler.update()
    assert scaler.get_scale() == 512.0
    for p, b, m in zip(ps, before, moments):
        assert torch.equal(p, b) and torch.equal(ours.state[p]["exp_avg"], m)
    assert int(ours.state_dict()["state"][0]["step"]) == 1


def test_fp16_parameters_skip_an_overflow_step_on_the_device():
    """float16 parameters with the optimizer's own loss scale: an inf gradient skips the update
    (weights, master weights and moments bit-identical), halves the scale and does not count."""
    ps = params(torch.float16, seed=14)
    ours = lightseq.optim.AdamW(ps, lr=1e-2, loss_scale=4096.0)
    ref, theirs = reference(ps, torch.optim.AdamW, lr=1e-2)
    data = grads(2, torch.float16, seed=15)
    for p, q, g in zip(ps, ref, data[0]):
        p.grad = g * 4096  # the loss was multiplied by opt.loss_scale
        q.grad = g.float()
    assert ours.loss_scale.item() == 4096.0
    ours.step()
    theirs.step()
    state = lambda: [t.clone() for p in ps for t in (p.detach(), *ours.state[p].values())]  # noqa: E731
    before = state()
    for i, p in enumerate(ps):
        p.grad.fill_(float("inf") if i == 3 else 1.0)
    ours.step()
    after = state()
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert ours.loss_scale.item() == 2048.0
    for p, q, g in zip(ps, ref, data[1]):
        p.grad.copy_(g * 2048)
        q.grad = g.float()
    ours.step()
    theirs.step()
    for p, q in zip(ps, ref):
        assert rel(ours.state[p]["master_param"], q) <= 1e-4
    assert int(ours.state_dict()["state"][0]["step"]) == 2


def test_zero_grad_keeps_the_arena_and_backward_accumulates_into_it():
    torch.manual_seed(11)
    model = torch.nn.Sequential(torch.nn.Linear(40, 24), torch.nn.ReLU(), torch.nn.Linear(24, 3)).cuda()
    ref = copy.deepcopy(model)
    ours = lightseq.optim.AdamW(model.parameters(), lr=1e-2)
    theirs = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    x = torch.randn(16, 40, device="cuda")
    for _ in range(5):
        for m, o in ((model, ours), (ref, theirs)):
            o.zero_grad(set_to_none=False)
            m(x).square().mean().backward()
            o.step()
    arena = ours._arenas[0][1]  # (group index, arena)
    assert all(p.grad.data_ptr() == v.data_ptr() for p, v in zip(arena.params, arena.grad_views))
    for p, q in zip(model.parameters(), ref.parameters()):
        assert rel(p, q) <= 1e-5
    # a model reloaded in place: the next step starts from the loaded weights
    model.load_state_dict(ref.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), ref.parameters()))


def test_a_captured_step_replays_with_the_current_lr_and_step():
    ps = params(torch.bfloat16, seed=12)
    lr = torch.tensor([1e-2], device="cuda")
    ours = lightseq.optim.AdamW(ps, lr=lr)
    ref, theirs = reference(ps, torch.optim.AdamW, lr=1e-2)
    data = grads(6, torch.bfloat16, seed=13)
    for p, g in zip(ps, data[0]):
        p.grad = g.clone()
    ours.step()  # builds the arena (not capturable) and takes step 1
    for q, g in zip(ref, data[0]):
        q.grad = g.float()
    theirs.step()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(s), torch.cuda.graph(graph):
        ours.step()
    torch.cuda.current_stream().wait_stream(s)
    for i, gs in enumerate(data[1:]):
        new_lr = 1e-2 * (0.5 ** i)
        lr.fill_(new_lr)
        for p, g in zip(ps, gs):
            p.grad.copy_(g)
        graph.replay()
        for q, g in zip(ref, gs):
            q.grad = g.float()
        theirs.param_groups[0]["lr"] = new_lr
        theirs.step()
    torch.cuda.synchronize()
    for p, q in zip(ps, ref):
        assert rel(ours.state[p]["master_param"], q) <= 1e-5
