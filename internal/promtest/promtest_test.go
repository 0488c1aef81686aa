package promtest

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeRange answers range queries as Prometheus does: one series whose
// values are what values says for the call's number (from 1).
func fakeRange(t *testing.T, values func(call int) string) (Client, *atomic.Int32) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/query_range" {
			http.NotFound(w, r)
			return
		}
		v := values(int(calls.Add(1)))
		if v == "" {
			fmt.Fprint(w, `{"status":"success","data":{"resultType":"matrix","result":[]}}`)
			return
		}
		fmt.Fprintf(w, `{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"job":"x"},"values":[[1,"0"],[2,%q]]}]}}`, v)
	}))
	t.Cleanup(srv.Close)
	return Client{Base: srv.URL, HTTP: srv.Client()}, &calls
}

func TestWaitRangeDataPollsUntilAValueAboveZero(t *testing.T) {
	c, calls := fakeRange(t, func(call int) string {
		switch call {
		case 1:
			return "" // no series yet
		case 2:
			return "0"
		}
		return "2.5"
	})
	got, err := c.WaitRangeData(t.Context(), []string{"up"}, time.Now(), time.Second, false, time.Now().Add(10*time.Second))
	if err != nil || got.Series != 1 || got.NonZero != "2.5" {
		t.Fatalf("WaitRangeData = %+v, %v; want 1 series, last value above zero 2.5", got, err)
	}
	if n := calls.Load(); n != 3 {
		t.Errorf("%d queries, want 3 (it stops at the first value above zero)", n)
	}
}

func TestWaitRangeDataAnyValueTakesZeros(t *testing.T) {
	c, _ := fakeRange(t, func(int) string { return "0" })
	got, err := c.WaitRangeData(t.Context(), []string{"up"}, time.Now(), time.Second, true, time.Now().Add(10*time.Second))
	if err != nil || got.Series != 1 || got.NonZero != "" {
		t.Fatalf("WaitRangeData = %+v, %v; want 1 series, none above zero", got, err)
	}
}

func TestWaitRangeDataGivesUpAtTheDeadline(t *testing.T) {
	c, _ := fakeRange(t, func(int) string { return "NaN" })
	start := time.Now()
	got, err := c.WaitRangeData(t.Context(), []string{"up"}, time.Now(), time.Second, false, time.Now().Add(time.Second))
	if err != nil || got.Series != 1 || got.NonZero != "" {
		t.Fatalf("WaitRangeData = %+v, %v; want the last round: 1 series, none above zero", got, err)
	}
	if d := time.Since(start); d < time.Second || d > 5*time.Second {
		t.Errorf("returned after %v, want at its 1s deadline", d)
	}
}

func TestWaitRangeDataStopsAtAnError(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close() // nothing answers at its address any more
	c := Client{Base: srv.URL, HTTP: http.DefaultClient}
	_, err := c.WaitRangeData(t.Context(), []string{"up"}, time.Now(), time.Second, false, time.Now().Add(10*time.Second))
	if err == nil || !strings.Contains(err.Error(), `query "up"`) {
		t.Fatalf("err = %v, want the failed query named", err)
	}
}

func TestWaitQueryPollsUntilOK(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) < 3 {
			fmt.Fprint(w, `{"status":"success","data":{"resultType":"vector","result":[]}}`)
			return
		}
		fmt.Fprint(w, `{"status":"success","data":{"resultType":"vector","result":[{"metric":{"job":"x"},"value":[1,"4"]}]}}`)
	}))
	defer srv.Close()
	c := Client{Base: srv.URL, HTTP: srv.Client()}
	ss, err := c.WaitQuery(t.Context(), "count(up)", time.Now().Add(10*time.Second), func(ss []Sample) bool { return len(ss) > 0 })
	if err != nil || len(ss) != 1 || ss[0].Val() != "4" || calls.Load() != 3 {
		t.Fatalf("WaitQuery = %v, %v after %d queries; want the third answer, 4", ss, err, calls.Load())
	}
	start := time.Now()
	ss, err = c.WaitQuery(t.Context(), "count(up)", time.Now().Add(time.Second), func([]Sample) bool { return false })
	if err != nil || len(ss) != 1 || time.Since(start) < time.Second {
		t.Fatalf("WaitQuery with a condition that never holds = %v, %v after %v; want the last answer at the 1s deadline", ss, err, time.Since(start))
	}
}
