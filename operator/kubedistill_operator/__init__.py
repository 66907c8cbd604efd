"""The kopf operator: DistillationJob → RayJob, StudentDeployment → Triton + router. No torch here."""
