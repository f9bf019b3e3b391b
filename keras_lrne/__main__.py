import sys

from keras_lrne.cli import main

sys.exit(main())
