"""Tiny members of the four Figure 2 encoder families, pretrained here with their own objectives.

`vae` (KL autoencoder), `vqgan` (VQ autoencoder), `mar` (masked diffusion on the tiny VAE's latents) and
`siglip` (sigmoid image-text loss) all train on the image stream of `data`; `common` saves each result with a
hash of its configuration and reloads it instead of training again.
"""
