package lab

// SetFailpoint makes Up fail when it reaches step; with crash, Up returns
// without tearing down, as if the process had died there.
func SetFailpoint(o *Options, step string, crash bool) {
	o.failpoint = step
	o.crash = crash
}

// ErrFailpoint is the error a failpoint injects.
var ErrFailpoint = errFailpoint
