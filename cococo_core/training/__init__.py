"""Training of CoCoCo's motion modules and of LGVI / LGVI-I on one shared Accelerate loop."""
