"""Service discovery: a pool's workers from the Kubernetes API instead of a list of URLs.

config.py   `discovery:` in a pool's config (imported by gateway/config.py, so it stays light)
pods.py     a pod -> role and URL, when Ready
members.py  the pods of one pool; publishes each role's URL list when it changes
watch.py    list + watch with lightkube; 410 Gone and broken streams -> a fresh list, backoff
runner.py   one watcher per discovered pool, feeding Pool.set_members; start/stop from the app
"""
