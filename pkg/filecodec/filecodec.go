// Package filecodec is how file content is compressed on its way from
// hostctl to vmagent: each ChunkSize of content becomes one zstd frame of
// its own, or stays as it is when it does not shrink. Frames of their own,
// rather than one stream, let the agent bound what it holds (one frame in,
// at most ChunkSize out) and let the client send any chunk either way.
//
// The agent's side is the threat model: a frame comes from an authenticated
// but untrusted caller, so the decoder refuses a frame whose window or
// output exceeds ChunkSize (a decompression bomb costs at most that).
package filecodec

import (
	"errors"
	"fmt"

	"github.com/klauspost/compress/zstd"
)

// Capability is what an agent that takes zstd frames announces in GetVersion.
const Capability = "files.zstd.v1"

// ChunkSize is how much content one message carries, plain or as a frame.
const ChunkSize = 1 << 20

// worthwhile is the most a frame may weigh, relative to its chunk, to be
// sent instead of it: below a 10 % saving the agent's decoding costs more
// than the bytes it saves.
const worthwhile = 0.9

// Encoder compresses chunks at zstd's fastest level: Go binaries shrink to
// about 25 % with it, and its speed keeps a workstation's cores ahead of
// any uplink.
type Encoder struct{ enc *zstd.Encoder }

// NewEncoder returns an Encoder; one is safe for concurrent use.
func NewEncoder() (*Encoder, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithWindowSize(ChunkSize),
		zstd.WithEncoderCRC(false), zstd.WithZeroFrames(true))
	if err != nil {
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	return &Encoder{enc: enc}, nil
}

// Encode appends the frame of chunk to dst and reports whether it is worth
// sending; when not, dst comes back as it was and the chunk goes plain.
func (e *Encoder) Encode(dst, chunk []byte) ([]byte, bool) {
	if len(chunk) > ChunkSize {
		panic("filecodec: chunk larger than ChunkSize")
	}
	out := e.enc.EncodeAll(chunk, dst)
	if float64(len(out)-len(dst)) > worthwhile*float64(len(chunk)) {
		return dst, false
	}
	return out, true
}

// ErrCorrupt reports a frame that is not valid zstd or decodes to more
// than ChunkSize.
var ErrCorrupt = errors.New("corrupt zstd frame")

// Decoder decodes frames one at a time. It is not safe for concurrent use:
// the agent keeps one per delivery.
type Decoder struct{ dec *zstd.Decoder }

// NewDecoder returns a Decoder that writes at most ChunkSize per frame and
// refuses larger windows; Close releases it.
func NewDecoder() (*Decoder, error) {
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.IgnoreChecksum(true),
		zstd.WithDecoderMaxWindow(ChunkSize), zstd.WithDecoderMaxMemory(ChunkSize), zstd.WithDecodeAllCapLimit(true))
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	return &Decoder{dec: dec}, nil
}

// Decode writes the content of frame into buf (of ChunkSize capacity) and
// returns it. A frame that decodes to more than ChunkSize is ErrCorrupt,
// and nothing beyond buf is ever allocated for it.
func (d *Decoder) Decode(buf, frame []byte) ([]byte, error) {
	out, err := d.dec.DecodeAll(frame, buf[:0])
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if len(out) > ChunkSize {
		return nil, fmt.Errorf("%w: it decodes to more than %d bytes", ErrCorrupt, ChunkSize)
	}
	return out, nil
}

// NewBuffer is a buffer for Decode.
func NewBuffer() []byte { return make([]byte, 0, ChunkSize) }

// Close releases the decoder.
func (d *Decoder) Close() { d.dec.Close() }
