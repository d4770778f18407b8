package server_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshvm/meshvm/pkg/agenterr"
	"github.com/meshvm/meshvm/pkg/fsroot"
	"github.com/meshvm/meshvm/pkg/host/agentclient"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

// A delivery's failures reach hostctl with the codes of the one table:
// through a planted symlink PermissionDenied, into a missing directory
// FailedPrecondition, content that is not what was declared InvalidArgument.
func TestDeliveryFailuresLeaveWithTheirCode(t *testing.T) {
	e := startAgent(t)
	c := e.client(t)
	bin := filepath.Join(e.dir, "usr/local/bin")
	data := []byte("pilot-agent")
	put := func(f agentclient.File) error {
		_, err := c.PutFile(ctxT(t), f)
		return err
	}

	wrong := agentclient.BytesFile("/usr/local/bin/pilot-agent", data)
	wrong.SHA256, wrong.Size = sum([]byte("something else")), int64(len(data))
	if err := put(wrong); !errors.Is(err, agenterr.InvalidArgument) || !strings.Contains(err.Error(), fsroot.ErrDigestMismatch.Error()) {
		t.Errorf("digest mismatch: got %v, want InvalidArgument naming the mismatch", err)
	}

	must(t, os.RemoveAll(bin))
	if err := put(agentclient.BytesFile("/usr/local/bin/pilot-agent", data)); !errors.Is(err, agenterr.FailedPrecondition) || !strings.Contains(err.Error(), "run Install first") {
		t.Errorf("missing directory: got %v, want FailedPrecondition saying to run Install first", err)
	}

	must(t, os.MkdirAll(filepath.Join(e.dir, "elsewhere"), 0o755))
	must(t, os.Symlink("/elsewhere", bin))
	// In a directory others can write: a symlink anyone could have planted.
	must(t, os.Chmod(filepath.Dir(bin), 0o777))
	// agentclient would stop at StatFiles, whose caller-named path that
	// fsroot calls unsafe is InvalidArgument; PutFile itself, raw:
	stream, err := e.raw(t).PutFile(ctxT(t))
	must(t, err)
	must(t, stream.Send(&agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Header{Header: &agentv1.FileHeader{
		Path: "/usr/local/bin/pilot-agent", Size: uint64(len(data)), Sha256: sum(data)}}}))
	must(t, stream.Send(&agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Chunk{Chunk: data}}))
	if _, err := stream.CloseAndRecv(); status.Code(err) != codes.PermissionDenied {
		t.Errorf("through a symlink: got %v, want PermissionDenied", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(e.dir, "elsewhere")); len(ents) != 0 {
		t.Errorf("the delivery went through the symlink: %v", ents)
	}
}
