"""Where a training job runs: ``local`` (torchrun on this machine); Kubernetes comes with issue 8."""
