package server_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/klauspost/compress/zstd"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshvm/meshvm/pkg/filecodec"
	"github.com/meshvm/meshvm/pkg/host/agentclient"
	"github.com/meshvm/meshvm/pkg/host/formcache"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
	"github.com/meshvm/meshvm/vmagent/config"
	"github.com/meshvm/meshvm/vmagent/internal/server"
)

// binaryLike is content that compresses as a Go binary does: symbol text
// with random bytes among it, different in every chunk.
func binaryLike(t testing.TB, size int) []byte {
	t.Helper()
	var text bytes.Buffer
	for i := 0; text.Len() < filecodec.ChunkSize; i++ {
		fmt.Fprintf(&text, "runtime.func%d github.com/meshvm/meshvm/pkg/x.(*T).Method%d ", i, i%97)
	}
	out := make([]byte, 0, size+filecodec.ChunkSize)
	noise := make([]byte, 16<<10)
	for len(out) < size {
		rand.Read(noise)
		chunk := bytes.Clone(text.Bytes()[:filecodec.ChunkSize])
		for k := 32 << 10; k < len(chunk); k += 64 << 10 {
			copy(chunk[k:], noise[:1<<10])
			noise = append(noise[1<<10:], noise[:1<<10]...)
		}
		out = append(out, chunk...)
	}
	return out[:size]
}

// cachedFile writes data where hostctl keeps a binary and returns its
// delivery through the compressed cache.
func cachedFile(t *testing.T, path string, data []byte) agentclient.File {
	t.Helper()
	dir := t.TempDir()
	local := filepath.Join(dir, "envoy")
	must(t, os.WriteFile(local, data, 0o755))
	f, err := formcache.New(filepath.Join(dir, "zstd")).File(path, local)
	must(t, err)
	if f.Form == nil {
		t.Fatalf("the cache gave %d compressible bytes no form", len(data))
	}
	return f
}

func TestCompressedDeliveryRoundTrip(t *testing.T) {
	e := startAgent(t)
	c := e.client(t)
	data := binaryLike(t, 12<<20) // under two probes: sent compressed at once
	f := cachedFile(t, "/usr/local/bin/envoy", data)
	res, err := c.PutFile(ctxT(t), f)
	if err != nil || !res.Sent || !res.Compressed {
		t.Fatalf("got %+v, %v, want it sent compressed", res, err)
	}
	if res.Bytes > int64(len(data))/2 {
		t.Errorf("got %d bytes sent for %d, want under half", res.Bytes, len(data))
	}
	got, err := os.ReadFile(filepath.Join(e.dir, "usr/local/bin/envoy"))
	must(t, err)
	if !bytes.Equal(got, data) {
		t.Fatalf("delivered content differs")
	}
	if res, err = c.PutFile(ctxT(t), f); err != nil || res.Sent {
		t.Errorf("second delivery: got %+v, %v, want nothing sent", res, err)
	}
}

func TestProbedDeliveryRoundTrip(t *testing.T) {
	e := startAgent(t)
	c := e.client(t)
	// Large enough to be probed: part plain, part framed, the rest the
	// faster way; the next file goes all the way the probe chose.
	for i, size := range []int{40 << 20, 20 << 20} {
		data := binaryLike(t, size)
		res, err := c.PutFile(ctxT(t), cachedFile(t, "/usr/local/bin/envoy", data))
		if err != nil || !res.Sent {
			t.Fatalf("file %d: got %+v, %v, want it sent", i, res, err)
		}
		if i == 0 && !res.Compressed {
			t.Errorf("file %d: got %+v, want frames among the probe's chunks", i, res)
		}
		if got, _ := os.ReadFile(filepath.Join(e.dir, "usr/local/bin/envoy")); !bytes.Equal(got, data) {
			t.Fatalf("file %d: delivered content differs", i)
		}
	}
}

func TestAgentAnnouncesZstd(t *testing.T) {
	v, err := startAgent(t).client(t).Version(ctxT(t))
	must(t, err)
	if !slices.Contains(v.GetCapabilities(), filecodec.Capability) {
		t.Fatalf("got capabilities %v, want %s among them", v.GetCapabilities(), filecodec.Capability)
	}
}

// oldAgent is an agent from before frames as a client sees it: it does not
// announce files.zstd.v1.
type oldAgent struct{ *server.Server }

func (a oldAgent) GetVersion(ctx context.Context, req *agentv1.GetVersionRequest) (*agentv1.GetVersionResponse, error) {
	v, err := a.Server.GetVersion(ctx, req)
	if err == nil {
		v.Capabilities = slices.DeleteFunc(slices.Clone(v.Capabilities), func(c string) bool { return c == filecodec.Capability })
	}
	return v, err
}

func TestNewClientOldAgentSendsPlain(t *testing.T) {
	e := startAgentServing(t, config.Default().Limits, func(s *server.Server) agentv1.AgentServiceServer { return oldAgent{s} })
	c := e.client(t)
	data := binaryLike(t, 6<<20)
	res, err := c.PutFile(ctxT(t), cachedFile(t, "/usr/local/bin/envoy", data))
	if err != nil || !res.Sent || res.Compressed || res.Bytes != int64(len(data)) {
		t.Fatalf("got %+v, %v, want all %d bytes sent plain", res, err, len(data))
	}
	if got, _ := os.ReadFile(filepath.Join(e.dir, "usr/local/bin/envoy")); !bytes.Equal(got, data) {
		t.Fatalf("delivered content differs")
	}
}

func TestOldClientNewAgentPlainChunks(t *testing.T) {
	e := startAgent(t)
	data := binaryLike(t, 3<<20)
	// A client from before frames: no compressed form.
	res, err := e.client(t).PutFile(ctxT(t), agentclient.BytesFile("/usr/local/bin/envoy", data))
	if err != nil || !res.Sent || res.Compressed {
		t.Fatalf("got %+v, %v, want it sent plain", res, err)
	}
	if got, _ := os.ReadFile(filepath.Join(e.dir, "usr/local/bin/envoy")); !bytes.Equal(got, data) {
		t.Fatalf("delivered content differs")
	}
}

// frame is the zstd frame of chunk.
func frame(t testing.TB, chunk []byte) []byte {
	t.Helper()
	enc, err := filecodec.NewEncoder()
	must(t, err)
	f, ok := enc.Encode(nil, chunk)
	if !ok {
		t.Fatal("the test chunk does not compress")
	}
	return f
}

// putRaw sends a header and msgs on the raw API and returns the outcome.
func putRaw(t *testing.T, c agentv1.AgentServiceClient, hdr *agentv1.FileHeader, msgs ...*agentv1.PutFileRequest) error {
	t.Helper()
	stream, err := c.PutFile(ctxT(t))
	must(t, err)
	must(t, stream.Send(&agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Header{Header: hdr}}))
	for _, m := range msgs {
		if stream.Send(m) != nil {
			break // the agent ended the stream: its status says why
		}
	}
	_, err = stream.CloseAndRecv()
	return err
}

func zstdMsg(f []byte) *agentv1.PutFileRequest {
	return &agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_ZstdChunk{ZstdChunk: f}}
}

func plainMsg(b []byte) *agentv1.PutFileRequest {
	return &agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Chunk{Chunk: b}}
}

func TestChunksAndFramesAlternate(t *testing.T) {
	e := startAgent(t)
	data := binaryLike(t, 3*filecodec.ChunkSize+1234)
	cs := filecodec.ChunkSize
	err := putRaw(t, e.raw(t), &agentv1.FileHeader{Path: "/usr/local/bin/envoy", Size: uint64(len(data)), Sha256: sum(data)},
		plainMsg(data[:cs]), zstdMsg(frame(t, data[cs:2*cs])), plainMsg(data[2*cs:3*cs]), zstdMsg(frame(t, data[3*cs:])))
	must(t, err)
	if got, _ := os.ReadFile(filepath.Join(e.dir, "usr/local/bin/envoy")); !bytes.Equal(got, data) {
		t.Fatalf("delivered content differs")
	}
}

func TestBadFramesRefusedOldFileKept(t *testing.T) {
	chunk := binaryLike(t, filecodec.ChunkSize)
	zeros := make([]byte, filecodec.ChunkSize)
	tests := []struct {
		name string
		hdr  func(path string) *agentv1.FileHeader
		msgs []*agentv1.PutFileRequest
		want string
	}{
		{"decodes past the declared size (a bomb)", func(p string) *agentv1.FileHeader {
			return &agentv1.FileHeader{Path: p, Size: 1000, Sha256: sum(zeros[:1000])}
		}, []*agentv1.PutFileRequest{zstdMsg(frame(t, zeros)), zstdMsg(frame(t, zeros))}, "size mismatch"},
		{"a frame larger than a chunk", func(p string) *agentv1.FileHeader {
			return &agentv1.FileHeader{Path: p, Size: 8 << 20, Sha256: sum(make([]byte, 8<<20))}
		}, []*agentv1.PutFileRequest{zstdMsg(bigFrame(t, 8<<20))}, "corrupt zstd frame"},
		{"corrupt frame", func(p string) *agentv1.FileHeader {
			return &agentv1.FileHeader{Path: p, Size: uint64(len(chunk)), Sha256: sum(chunk)}
		}, []*agentv1.PutFileRequest{zstdMsg(corrupt(frame(t, chunk)))}, "corrupt zstd frame"},
		{"sha256 of other content", func(p string) *agentv1.FileHeader {
			return &agentv1.FileHeader{Path: p, Size: uint64(len(chunk)), Sha256: sum(zeros)}
		}, []*agentv1.PutFileRequest{zstdMsg(frame(t, chunk))}, "declared"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := startAgent(t)
			old := []byte("the old envoy")
			target := filepath.Join(e.dir, "usr/local/bin/envoy")
			must(t, os.WriteFile(target, old, 0o755))
			err := putRaw(t, e.raw(t), tt.hdr("/usr/local/bin/envoy"), tt.msgs...)
			if status.Code(err) != codes.InvalidArgument || !bytes.Contains([]byte(err.Error()), []byte(tt.want)) {
				t.Fatalf("got %v, want InvalidArgument naming %q", err, tt.want)
			}
			if got, _ := os.ReadFile(target); !bytes.Equal(got, old) {
				t.Errorf("got %d bytes at the target, want the old content", len(got))
			}
			if tmp := temps(t, e.dir); len(tmp) != 0 {
				t.Errorf("got temporary files %v left, want none", tmp)
			}
		})
	}
}

// bigFrame is one zstd frame of n zero bytes, made by a streaming encoder
// (its window is larger than a chunk).
func bigFrame(t testing.TB, n int) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil, zstd.WithWindowSize(8<<20))
	must(t, err)
	return enc.EncodeAll(make([]byte, n), nil)
}

func corrupt(f []byte) []byte {
	f = slices.Clone(f)
	for i := 8; i < len(f); i += 7 {
		f[i] ^= 0x5a
	}
	return f
}
