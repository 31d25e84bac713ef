-- wrk script for bench/load.sh: PUBLISHJOBFINISH pushes with a distinct publish_id each,
-- signed once (plain mode's signature does not cover the body); counts non-success answers.
local query = os.getenv("WXHOOK_BENCH_QUERY")
local threads = {}
id, bad, counter = 0, 0, 0

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  -- Distinct per run and thread, below 2^53 so that it stays an exact integer.
  counter = ((os.time() % 1000000) * 10 + id) * 100000000
end

function request()
  counter = counter + 1
  local body = "<xml><ToUserName><![CDATA[gh_4d00ed8d6399]]></ToUserName>"
    .. "<FromUserName><![CDATA[oV5CrjpxgaGXNHIQigzNlgLTnwic]]></FromUserName>"
    .. "<CreateTime>1732170000</CreateTime><MsgType><![CDATA[event]]></MsgType>"
    .. "<Event><![CDATA[PUBLISHJOBFINISH]]></Event><PublishEventInfo><publish_id>" .. string.format("%.0f", counter)
    .. "</publish_id><publish_status>0</publish_status><article_id><![CDATA[b5O2OUs25HBxRceL7hfReg]]></article_id>"
    .. "<article_detail><count>1</count><item><idx>1</idx><article_url><![CDATA[https://mp.weixin.qq.com/s/x]]></article_url></item>"
    .. "</article_detail></PublishEventInfo></xml>"
  return wrk.format("POST", "/wechat?" .. query, { ["Content-Type"] = "text/xml" }, body)
end

function response(status, headers, body)
  if status ~= 200 or body ~= "success" then
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local bad_total = 0
  for _, thread in ipairs(threads) do
    bad_total = bad_total + thread:get("bad")
  end
  io.write(string.format("RESULT requests=%d rps=%.1f p50_ms=%.3f p99_ms=%.3f errors=%d not_success=%d\n",
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    bad_total))
end
