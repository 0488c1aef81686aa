package console

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
)

// Sample is one series of a metrics exposition (or one element of a
// Prometheus instant vector) at one time.
type Sample struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels"`
	Value  float64           `json:"value"`
	// Instance is where the series was scraped (a proxy's metrics URL, or
	// Prometheus' instance label).
	Instance string `json:"instance"`
}

// key identifies the series across snapshots.
func (s Sample) key() string {
	names := make([]string, 0, len(s.Labels))
	for k := range s.Labels {
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString(s.Instance)
	b.WriteByte('|')
	b.WriteString(s.Name)
	for _, k := range names {
		b.WriteByte('|')
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(s.Labels[k])
	}
	return b.String()
}

// wanted are the metric families the console reads; everything else in an
// exposition is skipped while parsing.
func wanted(name string) bool {
	switch name {
	case mOpened, mDenied, mSent, mReceived, mRequests, mDurationBucket, mCertExpiry:
		return true
	}
	return false
}

// Metric names read by the console.
const (
	mOpened         = "ambit_tcp_connections_opened_total"
	mDenied         = "ambit_tcp_connections_denied_total"
	mSent           = "ambit_tcp_sent_bytes_total"
	mReceived       = "ambit_tcp_received_bytes_total"
	mRequests       = "ambit_requests_total"
	mDurationBucket = "ambit_request_duration_seconds_bucket"
	mCertExpiry     = "ambit_certificate_expiry_timestamp_seconds"
)

// ParseText reads the Prometheus text exposition format (what the proxies
// serve on 15020 without content negotiation) and returns the samples of
// the families the console uses, labelled with instance.
func ParseText(r io.Reader, instance string) ([]Sample, error) {
	var out []Sample
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || text[0] == '#' {
			continue
		}
		name := text
		if i := strings.IndexAny(text, "{ \t"); i >= 0 {
			name = text[:i]
		}
		if !wanted(name) {
			continue
		}
		s, err := parseLine(text[len(name):])
		if err != nil {
			return nil, fmt.Errorf("%s line %d: %w", instance, line, err)
		}
		s.Name, s.Instance = name, instance
		out = append(out, s)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", instance, err)
	}
	return out, nil
}

// parseLine parses `{a="b",...} value [timestamp]` (the part after the
// metric name).
func parseLine(rest string) (Sample, error) {
	s := Sample{Labels: map[string]string{}}
	if strings.HasPrefix(rest, "{") {
		i := 1
		for {
			for i < len(rest) && (rest[i] == ' ' || rest[i] == ',') {
				i++
			}
			if i >= len(rest) {
				return s, fmt.Errorf("unterminated label set")
			}
			if rest[i] == '}' {
				i++
				break
			}
			eq := strings.IndexByte(rest[i:], '=')
			if eq < 0 || i+eq+1 >= len(rest) || rest[i+eq+1] != '"' {
				return s, fmt.Errorf("bad label at %q", rest[i:])
			}
			name := strings.TrimSpace(rest[i : i+eq])
			i += eq + 2
			var v strings.Builder
			for ; i < len(rest) && rest[i] != '"'; i++ {
				c := rest[i]
				if c == '\\' && i+1 < len(rest) {
					i++
					switch rest[i] {
					case 'n':
						c = '\n'
					default:
						c = rest[i]
					}
				}
				v.WriteByte(c)
			}
			if i >= len(rest) {
				return s, fmt.Errorf("unterminated label value of %s", name)
			}
			i++ // closing quote
			s.Labels[name] = v.String()
		}
		rest = rest[i:]
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return s, fmt.Errorf("no value")
	}
	v, err := parseValue(fields[0])
	if err != nil {
		return s, err
	}
	s.Value = v
	return s, nil
}

func parseValue(f string) (float64, error) {
	switch f {
	case "+Inf":
		return math.Inf(1), nil
	case "-Inf":
		return math.Inf(-1), nil
	case "NaN":
		return math.NaN(), nil
	}
	v, err := strconv.ParseFloat(f, 64)
	if err != nil {
		return 0, fmt.Errorf("bad value %q", f)
	}
	return v, nil
}
