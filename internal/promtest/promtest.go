// Package promtest queries a real Prometheus's HTTP API from tests: the
// instant and range queries, and the waits for their answers, that the
// lab's and the real cluster's observability tests check rules and
// dashboards with.
package promtest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Client reaches a Prometheus at Base (http://host:port) through HTTP.
type Client struct {
	HTTP *http.Client
	Base string
}

// Sample is one series of an instant query's answer.
type Sample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// Val is the sample's value as Prometheus wrote it.
func (s Sample) Val() string { v, _ := s.Value[1].(string); return v }

// String is the sample's labels (without the metric name) and value, for
// test logs.
func (s Sample) String() string {
	m := map[string]string{}
	for k, v := range s.Metric {
		if k != "__name__" {
			m[k] = v
		}
	}
	return fmt.Sprintf("%v=%s", m, s.Val())
}

// Series is one series of a range query's answer.
type Series struct {
	Metric map[string]string `json:"metric"`
	Values [][2]any          `json:"values"`
}

// api GETs path with v and decodes the answer's result into result; a
// scalar comes as one Sample.
func (c Client) api(ctx context.Context, path string, v url.Values, result any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Base+path+"?"+v.Encode(), nil)
	if err != nil {
		return err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return fmt.Errorf("%s: %w", body, err)
	}
	if r.Status != "success" {
		return fmt.Errorf("%s", r.Error)
	}
	if r.Data.ResultType == "scalar" {
		var s [2]any
		if err := json.Unmarshal(r.Data.Result, &s); err != nil {
			return err
		}
		r.Data.Result, _ = json.Marshal([]Sample{{Value: s}})
	}
	return json.Unmarshal(r.Data.Result, result)
}

// Query runs an instant PromQL query.
func (c Client) Query(ctx context.Context, q string) ([]Sample, error) {
	var ss []Sample
	if err := c.api(ctx, "/api/v1/query", url.Values{"query": {q}}, &ss); err != nil {
		return nil, fmt.Errorf("query %q: %w", q, err)
	}
	return ss, nil
}

// QueryRange runs q over [from, now] at step.
func (c Client) QueryRange(ctx context.Context, q string, from time.Time, step time.Duration) ([]Series, error) {
	var ss []Series
	v := url.Values{"query": {q}, "start": {fmt.Sprint(from.Unix())}, "end": {fmt.Sprint(time.Now().Unix())}, "step": {fmt.Sprint(step.Seconds())}}
	if err := c.api(ctx, "/api/v1/query_range", v, &ss); err != nil {
		return nil, fmt.Errorf("query %q: %w", q, err)
	}
	return ss, nil
}

// WaitQuery runs the instant query q until ok holds of its answer, or
// until deadline, and returns the last answer. A query's error ends the
// wait.
func (c Client) WaitQuery(ctx context.Context, q string, deadline time.Time, ok func([]Sample) bool) ([]Sample, error) {
	for {
		ss, err := c.Query(ctx, q)
		if err != nil || ok(ss) || time.Now().After(deadline) {
			return ss, err
		}
		select {
		case <-ctx.Done():
			return ss, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// RangeData is what a round of range queries found: how many series, and
// the last value above zero among them ("" when none was).
type RangeData struct {
	Series  int
	NonZero string
}

// WaitRangeData runs queries over [from, now] at step until their series
// hold a value above zero (with anyValue: until there are series at all),
// or until deadline, and returns what the last round found. Prometheus
// shows a scrape's samples only after it, so a dashboard panel's queries
// are polled rather than asked once. A query's error ends the wait.
func (c Client) WaitRangeData(ctx context.Context, queries []string, from time.Time, step time.Duration, anyValue bool, deadline time.Time) (RangeData, error) {
	for {
		var got RangeData
		for _, q := range queries {
			ss, err := c.QueryRange(ctx, q, from, step)
			if err != nil {
				return got, err
			}
			got.Series += len(ss)
			for _, s := range ss {
				for _, v := range s.Values {
					if str, _ := v[1].(string); IsNumber(str) && str != "0" {
						got.NonZero = str
					}
				}
			}
		}
		if got.Series > 0 && (got.NonZero != "" || anyValue) || time.Now().After(deadline) {
			return got, nil
		}
		select {
		case <-ctx.Done():
			return got, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// IsNumber reports whether a sample value is a number (not NaN or ±Inf).
func IsNumber(v string) bool {
	f, err := strconv.ParseFloat(v, 64)
	return err == nil && !math.IsNaN(f) && !math.IsInf(f, 0)
}
