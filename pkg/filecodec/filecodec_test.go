package filecodec_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"runtime"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/meshvm/meshvm/pkg/filecodec"
)

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func sum(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }

// mixed is compressible text with an incompressible stretch in the middle.
func mixed(t testing.TB) []byte {
	t.Helper()
	text := []byte(strings.Repeat("github.com/meshvm/meshvm/pkg/filecodec.(*Decoder).Decode ", 40_000)) // 2.3 MB
	noise := make([]byte, 2*filecodec.ChunkSize)
	rand.Read(noise)
	return append(append(append([]byte{}, text...), noise...), text[:12345]...)
}

func TestFormRoundTrip(t *testing.T) {
	data := mixed(t)
	enc, err := filecodec.NewEncoder()
	must(t, err)
	var form bytes.Buffer
	size, got, formSize, err := filecodec.Compress(&form, bytes.NewReader(data), enc)
	must(t, err)
	if size != int64(len(data)) || got != sum(data) || formSize != int64(form.Len()) {
		t.Fatalf("got size %d, sha256 %s, form %d bytes (wrote %d), want %d, %s", size, got, formSize, form.Len(), len(data), sum(data))
	}
	if formSize >= int64(len(data)) {
		t.Errorf("got a form of %d bytes for %d, want smaller", formSize, len(data))
	}
	must(t, filecodec.Verify(bytes.NewReader(form.Bytes()), size, got))

	// One record per chunk, the random ones kept as they are.
	fr := filecodec.NewFormReader(bytes.NewReader(form.Bytes()))
	var frames, plain int
	for {
		_, frame, err := fr.Next()
		if err != nil {
			break
		}
		if frame {
			frames++
		} else {
			plain++
		}
	}
	chunks := (len(data) + filecodec.ChunkSize - 1) / filecodec.ChunkSize
	if frames+plain != chunks || plain < 1 {
		t.Errorf("got %d frames and %d plain records, want %d records, the random chunks plain", frames, plain, chunks)
	}

	other := bytes.Clone(data)
	other[7] ^= 1
	if err := filecodec.Verify(bytes.NewReader(form.Bytes()), size, sum(other)); err == nil {
		t.Errorf("a form verified against another file's digest, want an error")
	}
}

func TestDecoderRefusesBombsWithinBoundedMemory(t *testing.T) {
	// 256 MiB of zeros in one frame of a few KiB, with a 8 MiB window.
	enc, err := zstd.NewWriter(nil, zstd.WithWindowSize(8<<20), zstd.WithEncoderLevel(zstd.SpeedFastest))
	must(t, err)
	bomb := enc.EncodeAll(make([]byte, 256<<20), nil)
	// The same, with a window of one chunk and no declared content size.
	var stream bytes.Buffer
	w, err := zstd.NewWriter(&stream, zstd.WithWindowSize(filecodec.ChunkSize), zstd.WithSingleSegment(false))
	must(t, err)
	for range 64 {
		w.Write(make([]byte, filecodec.ChunkSize))
	}
	must(t, w.Close())

	dec, err := filecodec.NewDecoder()
	must(t, err)
	defer dec.Close()
	buf := filecodec.NewBuffer()
	for name, frame := range map[string][]byte{"large window": bomb, "many blocks": stream.Bytes()} {
		t.Run(name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			_, err := dec.Decode(buf, frame)
			runtime.ReadMemStats(&after)
			if !errors.Is(err, filecodec.ErrCorrupt) {
				t.Fatalf("got %v, want ErrCorrupt", err)
			}
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 4<<20 {
				t.Errorf("decoding allocated %d MiB, want at most 4", grew>>20)
			}
		})
	}
}

func TestDecoderRefusesCorruptFrames(t *testing.T) {
	enc, err := filecodec.NewEncoder()
	must(t, err)
	chunk := []byte(strings.Repeat("pilot-agent ", 50_000))
	frame, ok := enc.Encode(nil, chunk)
	if !ok {
		t.Fatal("text does not compress")
	}
	dec, err := filecodec.NewDecoder()
	must(t, err)
	defer dec.Close()
	got, err := dec.Decode(filecodec.NewBuffer(), frame)
	if err != nil || !bytes.Equal(got, chunk) {
		t.Fatalf("got %d bytes, %v, want the chunk back", len(got), err)
	}
	for name, bad := range map[string][]byte{
		"truncated": frame[:len(frame)/2],
		"garbage":   bytes.Repeat([]byte{0x28, 0xb5, 0x2f, 0xfd, 0xff}, 100),
	} {
		if _, err := dec.Decode(filecodec.NewBuffer(), bad); !errors.Is(err, filecodec.ErrCorrupt) {
			t.Errorf("%s: got %v, want ErrCorrupt", name, err)
		}
	}
}
