"""lightseq.TrainStep without a GPU: the spec it derives from PyTorch modules (accepted by the
compiler, one stack per run of equal layers, final norms, tied or untied projection, the loss's
and the optimizer's settings) and what it refuses, each with its reason. The step itself runs in
tests/python/test_train_step.py (GPU)."""
import json

import pytest
import torch
from torch import nn

import lightseq
from lightseq import _native, _train

V, H = 997, 64


def structure(emb, encoder, decoder=None, projection=None, loss=None, opt=None, dtype=torch.bfloat16, **kw):
    params = list(emb.parameters()) + list(encoder.parameters()) + (list(decoder.parameters()) if decoder else [])
    opt = opt or torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.98), weight_decay=0.01)
    loss = loss or nn.CrossEntropyLoss(label_smoothing=0.1, ignore_index=1)
    args = dict(positions="sinusoidal", max_positions=256, embed_scale=None, embed_dropout=None, causal=False,
                clip_norm=0.0, attention="unfused")
    args.update(kw)
    return _train._structure(emb, encoder, decoder, projection, loss, opt, dtype, **args)


def issues(spec):
    try:
        C = _native.extension()
    except lightseq.Error:
        pytest.skip("the extension is not built")
    return C.spec_issues(json.dumps(spec))


def test_an_nn_transformer_gives_the_spec_and_names_of_the_step():
    t = nn.Transformer(H, 4, 3, 2, 128, dropout=0.1, batch_first=True)
    emb = nn.Embedding(V, H, padding_idx=1)
    s = structure(emb, t.encoder, t.decoder)
    assert issues(s.spec) == []
    enc, dec = s.spec["layers"]
    assert (enc["type"], enc["count"], enc["final_norm"], dec["type"], dec["count"], dec["final_norm"]) == (
        "encoder", 3, True, "decoder", 2, True)
    assert s.spec["embedding"]["tie_output"] and s.spec["embedding"]["scale"] == pytest.approx(8.0)
    assert s.spec["embedding"]["padding_rows"] == "embedded" and s.spec["embedding"]["dropout"] == 0.1
    assert s.spec["criterion"] == {"type": "cross_entropy", "label_smoothing": 0.1, "ignore_index": 1,
                                   "logits_chunk_mib": 256}
    assert s.spec["optimizer"]["type"] == "adamw" and s.spec["optimizer"]["betas"] == [0.9, 0.98]
    want = {f"encoder.{n}" for n, _ in t.encoder.named_parameters()} | {
        f"decoder.{n}" for n, _ in t.decoder.named_parameters()} | {"embed_tokens.weight"}
    assert set(s.tensors) == want
    assert s.two_streams and s.pad == 1 and s.ignore_index == 1


def test_layers_that_differ_form_stacks_and_an_untied_projection_is_its_own():
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(H, 4, 128, batch_first=True, norm_first=True), 3,
                                enable_nested_tensor=False)
    enc.layers[2].dropout.p = 0.3  # the activation dropout of the last layer differs
    emb = lightseq.nn.Embedding.fairseq(V, H, padding_idx=1)
    proj = nn.Linear(H, V, bias=False)
    params = list(emb.parameters()) + list(enc.parameters()) + [proj.weight]
    s = structure(emb, enc, projection=proj, opt=torch.optim.Adam(params, lr=1e-3, weight_decay=0.1), causal=True,
                  dtype=torch.float32)
    assert issues(s.spec) == []
    assert [(l["count"], l["dropout"]["activation"], l.get("causal")) for l in s.spec["layers"]] == [
        (2, 0.1, True), (1, 0.3, True)]
    assert not s.spec["embedding"]["tie_output"] and s.tensors["output_projection.weight"] is proj.weight
    assert s.spec["optimizer"]["type"] == "adam" and not s.two_streams
    # lightseq.optim's optimizers describe the step's too, their clipping included
    s = structure(emb, enc, projection=proj, opt=lightseq.optim.AdamW(params, lr=1e-3, max_grad_norm=2.0),
                  dtype=torch.float32)
    assert (s.spec["optimizer"]["type"], s.spec["optimizer"]["clip_norm"]) == ("adamw", 2.0)


@pytest.mark.parametrize("case, error, match", [
    ("sum", lightseq.Unsupported, "reduction is 'sum'"),
    ("weights", lightseq.Unsupported, "class weights"),
    ("sgd", lightseq.ArgumentTypeError, "torch.optim.AdamW or torch.optim.Adam"),
    ("groups", lightseq.Unsupported, "groups differ in weight_decay"),
    ("amsgrad", lightseq.Unsupported, "amsgrad=True"),
    ("bias", lightseq.Unsupported, "output projection has a bias"),
    ("norm_eps", lightseq.Unsupported, "encoder.norm has eps 0.001, its layers 1e-05"),
    ("learned", lightseq.ArgumentError, "positions='learned' with an nn.Embedding"),
    ("activation", lightseq.Unsupported, "encoder.layers.0: activation"),
])
def test_what_the_step_cannot_train_is_refused_with_its_reason(case, error, match):
    t = nn.Transformer(H, 4, 1, 1, 128, batch_first=True)
    emb = nn.Embedding(V, H, padding_idx=1)
    params = list(emb.parameters()) + list(t.parameters())
    kw = {}
    if case == "sum":
        kw["loss"] = nn.CrossEntropyLoss(reduction="sum")
    elif case == "weights":
        kw["loss"] = nn.CrossEntropyLoss(weight=torch.ones(V))
    elif case == "sgd":
        kw["opt"] = torch.optim.SGD(params, lr=0.1)
    elif case == "groups":
        kw["opt"] = torch.optim.AdamW([{"params": params[:1], "weight_decay": 0.0}, {"params": params[1:]}])
    elif case == "amsgrad":
        kw["opt"] = torch.optim.AdamW(params, amsgrad=True)
    elif case == "bias":
        kw["projection"] = nn.Linear(H, V)
    elif case == "norm_eps":
        t.encoder.norm.eps = 1e-3
    elif case == "learned":
        kw["positions"] = "learned"
    elif case == "activation":
        t.encoder.layers[0].activation = torch.tanh
    with pytest.raises(error, match=match):
        structure(emb, t.encoder, t.decoder, **kw)


def test_a_model_off_the_gpu_is_refused():
    t = nn.Transformer(H, 4, 1, 1, 128, batch_first=True)
    emb = nn.Embedding(V, H, padding_idx=1)
    opt = torch.optim.AdamW(list(emb.parameters()) + list(t.parameters()))
    with pytest.raises(lightseq.ArgumentError, match="move it to a CUDA device"):
        lightseq.TrainStep(embedding=emb, transformer=t, loss=nn.CrossEntropyLoss(), optimizer=opt)
    with pytest.raises(lightseq.ArgumentError, match="transformer= or encoder=/decoder=, not both"):
        lightseq.TrainStep(embedding=emb, transformer=t, encoder=t.encoder, loss=nn.CrossEntropyLoss(),
                           optimizer=opt)


# ---- lightseq.optim without a GPU: its spec and its argument checks ------------------------------

def test_an_optimizer_alone_is_a_valid_spec():
    spec = {"name": "opt", "precision": "bf16", "optimizer": {"type": "adamw", "lr": 1e-3, "clip_norm": 1.0}}
    assert issues(spec) == []
    assert issues({"name": "nothing", "precision": "bf16"})[0][2].startswith(
        "a spec needs at least one layer stack, an embedding or an optimizer")


@pytest.mark.parametrize("kw, match", [
    ({"lr": -1.0}, "lr=-1.0 is out of range"),
    ({"eps": 0.0}, "eps=0.0 is out of range"),
    ({"betas": (0.9, 1.0)}, "betas=\\(0.9, 1.0\\); give two numbers in \\[0, 1\\)"),
    ({"loss_scale": 0.0}, "loss_scale=0.0 must be positive"),
])
def test_optimizer_arguments_are_checked(kw, match):
    with pytest.raises(lightseq.ArgumentError, match=match):
        lightseq.optim.AdamW([nn.Parameter(torch.zeros(3))], **kw)


def test_an_optimizer_of_cpu_parameters_says_so_at_its_first_step():
    p = nn.Parameter(torch.zeros(3))
    opt = lightseq.optim.Adam([p])
    p.grad = torch.ones(3)
    with pytest.raises(lightseq.ArgumentError, match="on cpu; lightseq's Adam runs on CUDA devices"):
        opt.step()
    assert isinstance(opt, torch.optim.Optimizer) and opt.param_groups[0]["decoupled_weight_decay"] is False


def test_an_optimizer_of_sharded_parameters_is_refused_with_what_to_use(tmp_path):
    """FSDP2 (fully_shard) keeps DTensor parameters whose shards it all-gathers itself: lightseq's
    optimizers, which move parameters into their own arena, refuse them instead of training them
    wrong (a one-process gloo group on the CPU makes one)."""
    import torch.distributed as dist
    from torch.distributed.tensor import Replicate, distribute_tensor, init_device_mesh
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        p = nn.Parameter(distribute_tensor(torch.zeros(4, 4), mesh, [Replicate()]))
        with pytest.raises(lightseq.Unsupported, match="DTensor parameter.*fully_shard"):
            lightseq.optim.AdamW([p])
    finally:
        dist.destroy_process_group()
