"""Shadow evaluation on the device: a candidate version runs on sampled live requests after their reply, never
answering; its agreement with the serving version and both latencies go to the hub in windows (protocol/shadow.py).

compare.py   one request's outputs, candidate against serving, row by row
window.py    the open window's counts, closed into a ShadowSummary
runner.py    the hand-off from the serving path, the bounded queue and the worker thread with its CPU budget
fetch.py     the candidate downloaded and verified by the update's own steps, into a store of its own
manager.py   the shadows the desired state asks for: started, ended, reported
"""
