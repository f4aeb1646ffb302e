# conf/ is installed as the package rnnlab.conf so that Hydra finds it with pkg://rnnlab.conf
# from an editable install and from a plain `pip install .` alike.
