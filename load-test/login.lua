-- wrk: a stream of successful logins of the benchmark's user.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = "username=bench_login&password=correct+horse+battery+staple"
