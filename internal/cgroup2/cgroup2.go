// Package cgroup2 finds the cgroup v2 hierarchy on this host. It is
// /sys/fs/cgroup on most Kubernetes nodes and /sys/fs/cgroup/unified on
// hybrid hosts, so it is read from /proc/mounts rather than assumed;
// UnescapeMount decodes the paths there for its other readers too.
package cgroup2

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Mount returns the cgroup v2 mount point from /proc/self/mounts.
func Mount() (string, error) {
	v2, _, err := Mounts()
	return v2, err
}

// Mounts returns the cgroup v2 mount point and the cgroup v1 hierarchies'
// mount points (none on a unified host; a hybrid host has both) from
// /proc/self/mounts. It fails when there is no cgroup v2 mount.
func Mounts() (v2 string, v1 []string, err error) {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return "", nil, fmt.Errorf("find cgroup2 mount: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 {
			continue
		}
		switch fields[2] {
		case "cgroup2":
			if v2 == "" {
				v2 = UnescapeMount(fields[1])
			}
		case "cgroup":
			v1 = append(v1, UnescapeMount(fields[1]))
		}
	}
	if err := sc.Err(); err != nil {
		return "", nil, fmt.Errorf("find cgroup2 mount: %w", err)
	}
	if v2 == "" {
		return "", nil, errors.New("find cgroup2 mount: no cgroup2 file system in /proc/mounts; mount one (mount -t cgroup2 none /sys/fs/cgroup/unified)")
	}
	return v2, v1, nil
}

// UnescapeMount undoes the octal escapes (\040 for space) of a path in
// /proc/mounts or /proc/self/mountinfo.
func UnescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
