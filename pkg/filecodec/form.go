package filecodec

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
)

// The compressed form of a file, as hostctl caches it, is one record per
// ChunkSize of content, in order: a 4-byte little-endian word (the top bit
// set for a zstd frame, clear for the chunk as it is; the rest, the
// payload's length), then the payload. Records map one to one to the
// chunks, so a sender can switch between the form and the file at any chunk.
const frameBit = 1 << 31

// Compress writes the compressed form of src to w and returns the
// content's size and hex SHA-256, and the form's size. Chunks are
// compressed on every core, written in order.
func Compress(w io.Writer, src io.Reader, enc *Encoder) (size int64, sum string, formSize int64, err error) {
	type record struct {
		chunk, frame []byte
		ok           bool
		done         chan struct{}
	}
	workers := runtime.GOMAXPROCS(0)
	jobs := make(chan *record)
	queue := make(chan *record, 2*workers) // bounds what is held: 2 MiB each
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range jobs {
				r.frame, r.ok = enc.Encode(nil, r.chunk)
				close(r.done)
			}
		}()
	}
	var readErr error
	stop := make(chan struct{})
	go func() {
		defer close(queue)
		defer close(jobs)
		for {
			chunk := make([]byte, ChunkSize)
			n, rerr := io.ReadFull(src, chunk)
			if n > 0 {
				r := &record{chunk: chunk[:n], done: make(chan struct{})}
				select {
				case queue <- r:
				case <-stop:
					return
				}
				jobs <- r
			}
			if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
				return
			}
			if rerr != nil {
				readErr = rerr
				return
			}
		}
	}()
	defer func() {
		close(stop)
		for range queue { // let the reader end
		}
		wg.Wait()
	}()
	h := sha256.New()
	bw := bufio.NewWriterSize(w, 1<<20)
	for r := range queue {
		<-r.done
		h.Write(r.chunk)
		size += int64(len(r.chunk))
		payload, word := r.chunk, uint32(len(r.chunk))
		if r.ok {
			payload, word = r.frame, uint32(len(r.frame))|frameBit
		}
		if err := binary.Write(bw, binary.LittleEndian, word); err != nil {
			return 0, "", 0, err
		}
		if _, err := bw.Write(payload); err != nil {
			return 0, "", 0, err
		}
		formSize += 4 + int64(len(payload))
	}
	if readErr != nil {
		return 0, "", 0, readErr
	}
	return size, hex.EncodeToString(h.Sum(nil)), formSize, bw.Flush()
}

// FormReader reads a compressed form record by record.
type FormReader struct {
	r   *bufio.Reader
	buf []byte
}

// NewFormReader reads the form from r.
func NewFormReader(r io.Reader) *FormReader {
	return &FormReader{r: bufio.NewReaderSize(r, 256<<10), buf: make([]byte, ChunkSize)}
}

// errForm reports a cached form that is not one: the cache entry is bad.
var errForm = errors.New("malformed compressed form")

// Next returns the next record's payload (valid until the next call) and
// whether it is a zstd frame; io.EOF after the last.
func (f *FormReader) Next() (payload []byte, frame bool, err error) {
	var word uint32
	if err := binary.Read(f.r, binary.LittleEndian, &word); err != nil {
		if err == io.EOF {
			return nil, false, io.EOF
		}
		return nil, false, fmt.Errorf("%w: %v", errForm, err)
	}
	n := int(word &^ frameBit)
	if n > ChunkSize {
		return nil, false, fmt.Errorf("%w: a record of %d bytes", errForm, n)
	}
	if _, err := io.ReadFull(f.r, f.buf[:n]); err != nil {
		return nil, false, fmt.Errorf("%w: %v", errForm, err)
	}
	return f.buf[:n], word&frameBit != 0, nil
}

// Skip passes over the next record without returning it.
func (f *FormReader) Skip() error {
	var word uint32
	if err := binary.Read(f.r, binary.LittleEndian, &word); err != nil {
		return fmt.Errorf("%w: %v", errForm, err)
	}
	if _, err := f.r.Discard(int(word &^ frameBit)); err != nil {
		return fmt.Errorf("%w: %v", errForm, err)
	}
	return nil
}

// Verify decodes the whole form from r and checks it against the
// content's size and hex SHA-256, as the agent will.
func Verify(r io.Reader, size int64, sum string) error {
	dec, err := NewDecoder()
	if err != nil {
		return err
	}
	defer dec.Close()
	h := sha256.New()
	var n int64
	buf := NewBuffer()
	fr := NewFormReader(r)
	for {
		payload, frame, err := fr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if frame {
			if payload, err = dec.Decode(buf, payload); err != nil {
				return err
			}
		}
		h.Write(payload)
		n += int64(len(payload))
	}
	if got := hex.EncodeToString(h.Sum(nil)); n != size || got != sum {
		return fmt.Errorf("%w: it decodes to %d bytes with sha256 %s, want %d and %s", errForm, n, got, size, sum)
	}
	return nil
}
