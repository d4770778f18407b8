package server

import (
	"errors"
	"io/fs"

	"github.com/meshvm/meshvm/pkg/agenterr"
	"github.com/meshvm/meshvm/pkg/fsroot"
	"github.com/meshvm/meshvm/vmagent/internal/probe"
	"github.com/meshvm/meshvm/vmagent/internal/sidecar"
	"github.com/meshvm/meshvm/vmagent/internal/vmfiles"
)

// classOf gives the agent's packages' sentinel errors their class, so each
// reaches hostctl as its own code instead of Unknown: the agent's one
// sentinel-to-class table (agenterr holds the one class-to-code table), as
// containerd's errdefs are mapped at its gRPC edge. The first match wins:
// the packages' own sentinels before the fsroot and fs ones they may wrap.
var classOf = []struct {
	err, class error
}{
	{sidecar.ErrNoSystemd, agenterr.FailedPrecondition},
	{sidecar.ErrUnitNotFound, agenterr.NotFound},
	{sidecar.ErrJobFailed, agenterr.FailedPrecondition},
	{vmfiles.ErrBusy, agenterr.Aborted},
	// A delivery through a planted symlink is refused, not malformed: the
	// path was checked canonical and allowlisted before (ErrUnsafePath from
	// a caller's path below is InvalidArgument).
	{vmfiles.ErrUnsafeTarget, agenterr.PermissionDenied},
	// A delivery's missing directory is the VM's state, not a missing file.
	{vmfiles.ErrNoDirectory, agenterr.FailedPrecondition},
	{probe.ErrNotLocal, agenterr.InvalidArgument},
	{probe.ErrBadPort, agenterr.InvalidArgument},
	{probe.ErrNotService, agenterr.InvalidArgument},
	{fsroot.ErrUnsafePath, agenterr.InvalidArgument},
	{fsroot.ErrSizeMismatch, agenterr.InvalidArgument},
	{fsroot.ErrDigestMismatch, agenterr.InvalidArgument},
	{fsroot.ErrUntrusted, agenterr.FailedPrecondition},
	{fsroot.ErrTooLarge, agenterr.FailedPrecondition},
	{fs.ErrNotExist, agenterr.NotFound},
	{fs.ErrPermission, agenterr.PermissionDenied},
}

// classify is what the interceptors send: err with its class, if it has
// none yet and wraps a sentinel above.
func classify(err error) error {
	if err == nil || agenterr.Class(err) != nil {
		return err
	}
	for _, c := range classOf {
		if errors.Is(err, c.err) {
			return agenterr.Classify(err, c.class)
		}
	}
	return err
}
