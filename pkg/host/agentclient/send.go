package agentclient

import (
	"context"
	"fmt"
	"io"
	"slices"
	"time"

	"google.golang.org/grpc"

	"github.com/meshvm/meshvm/pkg/filecodec"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

// probed is what a connection's first probe found: frames faster than
// plain chunks, or not.
type probed int

const (
	unprobed probed = iota
	plainFaster
	framesFaster
)

// The probe, in chunks. The first ones of each kind only fill the 4 MiB
// flow-control window (about 16 frames of a binary, 4 plain chunks); from
// there each Send waits for the agent to take data, and the timed ones
// tell how fast the link and the agent's decoding let it.
const (
	framesFill, framesTimed = 16, 8
	plainFill, plainTimed   = flowWindow / ChunkSize, 8
	probeChunks             = framesFill + framesTimed + plainFill + plainTimed
)

// framesSlowerThan is the content throughput of frames below which plain
// chunks are not tried: the link is slow (plain would carry four times the
// bytes over it), unless the agent decodes slower than that, which no VM
// core measured does (about 300 MB/s on a small cloud core).
const framesSlowerThan = 100e6

// sendContent sends the content of s.f, from its compressed form when the
// agent takes it and frames are faster. Frames win over a slow link, plain
// chunks over one faster than the agent decodes: the first file of at
// least probeChunks over a connection starts framed, timed; if that is
// fast, plain chunks are timed too, and the faster sends the rest of it
// and the next files. A smaller file before that goes framed: a slow link
// is the common case.
func (c *Client) sendContent(ctx context.Context, s *chunkSender, size int64) error {
	framed := false
	if s.f.Form != nil {
		ok, err := c.takesZstd(ctx)
		if err != nil {
			return err
		}
		framed = ok
	}
	c.mu.Lock()
	found := c.framed
	c.mu.Unlock()
	switch {
	case !framed || found == plainFaster:
		return s.run(0, -1, false)
	case found == framesFaster || size < probeChunks*ChunkSize:
		return s.run(0, -1, true)
	}
	if err := s.run(0, framesFill+framesTimed, true); err != nil || s.done {
		return err
	}
	frames := s.rate(framesFill, framesFill+framesTimed)
	next, found := framesFill+framesTimed, framesFaster
	if frames >= framesSlowerThan {
		if err := s.run(next, probeChunks, false); err != nil || s.done {
			return err
		}
		if s.rate(next+plainFill, probeChunks) > frames {
			found = plainFaster
		}
		next = probeChunks
	}
	c.mu.Lock()
	c.framed = found
	c.mu.Unlock()
	return s.run(next, -1, found == framesFaster)
}

// takesZstd says whether the agent announces filecodec.Capability (Version
// asks it once); an agent from before it gets plain chunks.
func (c *Client) takesZstd(ctx context.Context) (bool, error) {
	v, err := c.Version(ctx)
	if err != nil {
		return false, err
	}
	return slices.Contains(v.GetCapabilities(), filecodec.Capability), nil
}

// chunkSender sends one file's content chunk by chunk, each plain (read
// from the content) or framed (from the compressed form, whose records
// are the chunks one to one).
type chunkSender struct {
	stream grpc.ClientStreamingClient[agentv1.PutFileRequest, agentv1.PutFileResponse]
	f      File

	content   io.ReadCloser
	contentAt int // the chunk the content is read at
	formFile  io.ReadCloser
	form      *filecodec.FormReader
	formAt    int
	buf       []byte
	sentAt    []time.Time // when each chunk's Send returned
	wire      int64       // bytes of data sent
	frames    int
	done      bool // the content ended, or the agent ended the stream (its status says why)
}

func (s *chunkSender) close() {
	for _, c := range []io.Closer{s.content, s.formFile} {
		if c != nil {
			c.Close()
		}
	}
}

// run sends chunks from up to to (to the end when negative), framed or not.
func (s *chunkSender) run(from, to int, framed bool) error {
	for i := from; !s.done && (to < 0 || i < to); i++ {
		var err error
		if framed {
			err = s.frame(i)
		} else {
			err = s.plain(i)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// rate is the content throughput (bytes/s) of chunks from up to to, timed
// from the Send of the chunk before.
func (s *chunkSender) rate(from, to int) float64 {
	return float64((to-from)*ChunkSize) / s.sentAt[to-1].Sub(s.sentAt[from-1]).Seconds()
}

func (s *chunkSender) plain(i int) error {
	if s.content == nil {
		r, err := s.f.Open()
		if err != nil {
			return fmt.Errorf("open %s: %w", s.f.Path, err)
		}
		s.content, s.buf = r, make([]byte, ChunkSize)
	}
	if skip := int64(i-s.contentAt) * ChunkSize; skip > 0 {
		if _, err := io.CopyN(io.Discard, s.content, skip); err != nil {
			return fmt.Errorf("read %s: %w", s.f.Path, err)
		}
	}
	n, err := io.ReadFull(s.content, s.buf)
	s.contentAt = i + 1
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		s.done = true
	} else if err != nil {
		return fmt.Errorf("read %s: %w", s.f.Path, err)
	}
	if n == 0 {
		return nil
	}
	return s.send(&agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Chunk{Chunk: s.buf[:n]}}, n)
}

func (s *chunkSender) frame(i int) error {
	if s.form == nil {
		r, err := s.f.Form()
		if err != nil {
			return fmt.Errorf("open the compressed form of %s: %w", s.f.Path, err)
		}
		s.formFile, s.form = r, filecodec.NewFormReader(r)
	}
	for ; s.formAt < i; s.formAt++ {
		if err := s.form.Skip(); err != nil {
			return fmt.Errorf("the compressed form of %s: %w", s.f.Path, err)
		}
	}
	payload, framed, err := s.form.Next()
	s.formAt = i + 1
	if err == io.EOF {
		s.done = true
		return nil
	}
	if err != nil {
		return fmt.Errorf("the compressed form of %s: %w", s.f.Path, err)
	}
	msg := &agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Chunk{Chunk: payload}}
	if framed {
		msg.Msg = &agentv1.PutFileRequest_ZstdChunk{ZstdChunk: payload}
		s.frames++
	}
	return s.send(msg, len(payload))
}

func (s *chunkSender) send(msg *agentv1.PutFileRequest, wire int) error {
	if err := s.stream.Send(msg); err != nil {
		if err == io.EOF {
			s.done = true
			return nil
		}
		return err
	}
	s.sentAt = append(s.sentAt, time.Now())
	s.wire += int64(wire)
	return nil
}
