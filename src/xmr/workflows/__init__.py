"""End-to-end jobs that combine the stages below (data, models, index, eval) into one call."""
