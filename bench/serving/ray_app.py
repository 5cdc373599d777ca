"""Ray Serve peer for the serving benchmark: the same XGBoost JSON file as Flotilla and MLServer,
in a Ray Serve deployment behind Ray's HTTP proxy, answering the KServe v2 infer route with a
KServe v2 JSON response (so wrk sends every server the same body).

Settings as a Ray Serve user on this machine would write them: Ray started with the machine's
cores, 2 replicas of 1 CPU each (the other servers run 2 model instances), XGBoost with 1 thread
per replica, Ray Serve's defaults otherwise (max_ongoing_requests, the proxy's settings).

Usage: ray_app.py MODEL_JSON PORT   (runs until SIGTERM; GET on the route answers once deployed)
"""
import os, signal, sys, time

import numpy as np
import ray
import xgboost as xgb
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

ROUTE = "/v2/models/xgb/infer"


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 1})
class XGBoost:
    def __init__(self, path):
        self.booster = xgb.Booster()
        self.booster.load_model(path)
        self.booster.set_param({"nthread": 1})

    async def __call__(self, request: Request):
        if request.method == "GET":
            return JSONResponse({"ready": True})
        body = await request.json()
        t = body["inputs"][0]
        x = np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])
        y = self.booster.inplace_predict(x)
        return JSONResponse({"model_name": "xgb", "outputs": [
            {"name": "output__0", "datatype": "FP32", "shape": [len(y), 1], "data": y.astype(float).tolist()}]})


def main():
    path, port = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(XGBoost.bind(path), route_prefix=ROUTE)
    try:
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
