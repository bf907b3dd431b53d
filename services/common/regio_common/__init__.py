"""Code shared by every Regio service: settings, logging, errors, subjects, catalogue, money."""
