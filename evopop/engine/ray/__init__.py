"""The Ray room: the executor on a Ray cluster (`executor`), its trainer actors (`trainer`) and the
cluster checks (`cluster`). The only package of evopop that imports Ray (an import contract)."""
