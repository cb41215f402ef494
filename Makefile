# Shortcuts for dev.py, which needs only Python 3.10+ (make is optional).
.PHONY: demo test lint bench
demo:
	python3 dev.py demo
test:
	python3 dev.py test
lint:
	python3 dev.py lint
bench:
	python3 dev.py bench
