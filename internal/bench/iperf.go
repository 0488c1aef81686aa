package bench

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Throughput is one iperf3 TCP run, from its JSON output (-J).
type Throughput struct {
	Streams int     `json:"streams"`
	Seconds float64 `json:"seconds"`
	// BitsPerSecond is what the receiver got, the number reported;
	// SentBitsPerSecond what the sender wrote (more when data was still
	// in flight, or buffered in a proxy, at the end).
	BitsPerSecond     float64 `json:"bitsPerSecond"`
	SentBitsPerSecond float64 `json:"sentBitsPerSecond"`
	Bytes             int64   `json:"bytes"`
	Retransmits       int64   `json:"retransmits"`
	// SenderCPU and ReceiverCPU are iperf3's own CPU use, in % of one core
	// (its host_total and remote_total).
	SenderCPU   float64 `json:"senderCPUPercent"`
	ReceiverCPU float64 `json:"receiverCPUPercent"`
}

type iperfSum struct {
	Seconds       float64 `json:"seconds"`
	Bytes         int64   `json:"bytes"`
	BitsPerSecond float64 `json:"bits_per_second"`
	Retransmits   int64   `json:"retransmits"`
}

type iperfJSON struct {
	Start struct {
		TestStart struct {
			NumStreams int `json:"num_streams"`
		} `json:"test_start"`
	} `json:"start"`
	End struct {
		SumSent     *iperfSum `json:"sum_sent"`
		SumReceived *iperfSum `json:"sum_received"`
		CPU         struct {
			HostTotal   float64 `json:"host_total"`
			RemoteTotal float64 `json:"remote_total"`
		} `json:"cpu_utilization_percent"`
	} `json:"end"`
	Error string `json:"error"`
}

// ParseIperf reads the JSON iperf3 -J prints for a TCP client run. iperf3
// reports failures in an "error" field (and may still exit 0); those come
// back as errors.
func ParseIperf(data []byte) (Throughput, error) {
	var j iperfJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return Throughput{}, fmt.Errorf("iperf3 output: %w", err)
	}
	if j.Error != "" {
		return Throughput{}, fmt.Errorf("iperf3: %s", j.Error)
	}
	if j.End.SumReceived == nil || j.End.SumSent == nil {
		return Throughput{}, errors.New("iperf3 output: no end.sum_sent/sum_received (not a finished TCP client run)")
	}
	t := Throughput{
		Streams:           j.Start.TestStart.NumStreams,
		Seconds:           j.End.SumReceived.Seconds,
		BitsPerSecond:     j.End.SumReceived.BitsPerSecond,
		SentBitsPerSecond: j.End.SumSent.BitsPerSecond,
		Bytes:             j.End.SumReceived.Bytes,
		Retransmits:       j.End.SumSent.Retransmits,
		SenderCPU:         j.End.CPU.HostTotal,
		ReceiverCPU:       j.End.CPU.RemoteTotal,
	}
	if t.BitsPerSecond <= 0 {
		return t, errors.New("iperf3: the receiver got no data")
	}
	return t, nil
}
