"""Console scripts: gems-pretune, gems-tunedb."""
