"""End-to-end check of the models on a CUDA GPU (run on the device machine): the Triton
paths picked by default must give the CPU paths' logits and gradients, decoding must match
the parallel forward, and a short bf16-autocast training run must learn. Prints a table."""
import time

import torch
import torch.nn.functional as F

from mimetic import MambaConfig, MambaLM
from mimetic.tasks import make_task
from mimetic.train import TrainConfig, train


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


rows = []
for layer in ("Mamba1", "Mamba2"):
    for attn in ([], [1]):
        torch.manual_seed(0)
        ssm = {"layer": layer, "d_state": 16}
        if layer == "Mamba2":
            ssm.update(headdim=32, chunk_size=64)
        cfg = MambaConfig(d_model=128, n_layer=3, vocab_size=100, ssm_cfg=ssm, init="mimetic",
                          attn_layer_idx=attn, attn_cfg={"num_heads": 4, "rotary_emb_dim": 32} if attn else {})
        cpu = MambaLM(cfg)
        gpu = MambaLM(cfg).cuda()
        gpu.load_state_dict(cpu.state_dict())
        ids = torch.randint(0, 100, (4, 300))
        lc = cpu(ids)
        lg = gpu(ids.cuda())
        F.cross_entropy(lc.flatten(0, 1), ids.roll(-1, 1).flatten()).backward()
        F.cross_entropy(lg.flatten(0, 1), ids.cuda().roll(-1, 1).flatten()).backward()
        grad_err = max(rel(pg.grad.cpu(), pc.grad) for pc, pg in zip(cpu.parameters(), gpu.parameters())
                       if pc.grad is not None)
        gpu.eval()
        with torch.no_grad():
            full = gpu(ids[:, :40].cuda())
            cache = gpu.allocate_cache(4, 40)
            pre = gpu(ids[:, :20].cuda(), cache=cache)
            steps = [gpu.step(ids[:, t:t + 1].cuda(), cache) for t in range(20, 40)]
            step_err = rel(torch.cat([pre, *steps], 1), full)
        out = gpu.generate(ids[:, :5].cuda(), 16)
        rows.append((layer, "attn" if attn else "-", rel(lg.detach().cpu(), lc.detach()), grad_err, step_err,
                     tuple(out.shape)))

task = make_task("copy", copy_len=32, vocab=16)
res = {}
for init in ("default", "mimetic"):
    torch.manual_seed(0)
    m = MambaLM(MambaConfig(d_model=64, n_layer=2, vocab_size=task.vocab_size, init=init,
                            ssm_cfg={"layer": "Mamba2", "d_state": 16, "headdim": 16, "chunk_size": 64}))
    t0 = time.time()
    r = train(m, task, TrainConfig(steps=400, batch_size=32, lr=6e-3, warmup_steps=30, eval_every=100,
                                   eval_batches=2, progress=False, device="cuda"))
    res[init] = (r.final["token_acc"], time.time() - t0)

print(torch.cuda.get_device_name(), torch.__version__)
print(f"{'layer':<8}{'mixers':<7}{'logits rel err':>15}{'max grad rel err':>18}{'step vs fwd':>13}  generate")
for r in rows:
    print(f"{r[0]:<8}{r[1]:<7}{r[2]:>15.2e}{r[3]:>18.2e}{r[4]:>13.2e}  {r[5]}")
for init, (acc, t) in res.items():
    print(f"copy_len 32, Mamba2, {init:<8} init, 400 steps bf16 autocast: token_acc {acc:.3f} ({t:.0f} s)")
