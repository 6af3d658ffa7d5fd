"""Human attention in training: data, architecture and loss integration of where people look."""
