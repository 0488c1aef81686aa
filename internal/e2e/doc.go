// Package e2e owns the mesh's end-to-end tests: a lab with node proxies on
// every node, real pods, real capture, real tunnels, checked the way an
// operator would check them (what the server sees, what crosses the wire,
// what metrics and logs say).
package e2e
