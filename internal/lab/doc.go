// Package lab owns meshlab's cluster-on-one-host: it reads a topology (nodes,
// namespaces, pods), builds it out of network namespaces, veth pairs, a
// bridge underlay and cgroup v2 directories, mounts the lab's own bpffs,
// generates the lab CA, enrolls the pods of opted-in namespaces with package
// redirect, and tears all of it down again.
//
// Everything Up creates is written to a journal in <StateDir>/state.json
// before it is created, so Down removes exactly what the lab made (and only
// that), also after an Up that crashed half-way. Every name the lab uses
// carries the lab's random four-hex-digit ID, so several labs can coexist on
// one machine:
//
//	netns   ml-<id>-underlay, ml-<id>-<node>, ml-<id>-<namespace>-<pod>
//	cgroup  <cgroup2 mount>/meshlab-<id>/<node>/<namespace>-<pod>
//	links   m<id>br (underlay bridge), m<id>n<i> (underlay side of node i),
//	        m<id>p<j> (node side of pod j), eth0 (in nodes and pods)
//
// Addressing, for node i and the j-th pod on it (both 1-based):
//
//	node underlay  192.168.251.<i>/24, fd00:a:0::<i>/64
//	pod            10.244.<i>.<j+1>/32, fd00:a:<i>::<j+1>/128
//	pod gateway    10.244.<i>.1, fd00:a:<i>::1 (on every node side veth)
//
// The lab never touches the host network namespace: links are created with
// netlink handles bound to lab namespaces and their peers go straight into
// other lab namespaces.
package lab
