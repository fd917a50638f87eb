// TensorChunk (proto/cluster.proto) in wire bytes, for the bulk path of FetchTensors (docs/weights.md): the
// sender reads a tensor's bytes from disk straight into the slot a chunk's encoding keeps for them, and the
// receiver takes the payload as a view of the received message. Going through protobufjs instead copied every
// payload once more on each side and allocated a buffer per copy, which on a loopback link cost more CPU than
// the transfer itself. The bytes are exactly the proto's encoding, so a peer decoding with protobufjs (or
// sending with it) interoperates.
import type * as grpc from "@grpc/grpc-js";
import type { TensorChunk } from "./types.js";

// Field tags of TensorChunk: (field number << 3) | wire type.
const NAME = (1 << 3) | 2;
const OFFSET = (2 << 3) | 0;
const TOTAL = (3 << 3) | 0;
const PAYLOAD = (4 << 3) | 2;
const CRC32 = (5 << 3) | 0;

/** Bytes a chunk's encoding needs besides its name and payload: four tags and their varints, at most. */
const maxFixedBytes = 1 + 5 + 1 + 10 + 1 + 10 + 1 + 5;
/** What follows the payload: the crc32 field. */
const maxTailBytes = 1 + 5;

/** Bytes a slot needs for a payload of `length` under a name of `nameBytes`: what `backing` must hold. */
export function slotBytes(nameBytes: number, length: number): number {
  return maxFixedBytes + nameBytes + length + maxTailBytes;
}

/** A chunk already encoded: the FetchTensors serializer passes its bytes through (withTensorChunkCodec). */
export class EncodedTensorChunk {
  constructor(readonly bytes: Buffer) {}
}

/**
 * Room for one chunk of a tensor: a buffer with the payload's place fixed, so the file can be read into it
 * (`payload`) before the encoding around it is written (`seal`).
 */
export class ChunkSlot {
  readonly payload: Buffer;
  /** The memory the encoding lives in: `backing` when it was given and large enough, else a new buffer. */
  readonly buffer: Buffer;
  private readonly headStart: number;

  constructor(name: Buffer, offset: number, total: number, length: number, backing?: Buffer) {
    let head = 1 + varintLength(name.length) + name.length;
    head += 1 + varintLength(offset) + 1 + varintLength(total) + 1 + varintLength(length);
    // The head ends where the payload starts; its room is sized for the largest varints so the layout of
    // every slot of a read is the same shape.
    const room = maxFixedBytes + name.length;
    const size = slotBytes(name.length, length);
    this.buffer = backing && backing.length >= size ? backing : Buffer.allocUnsafe(size);
    this.headStart = room - head;
    let at = this.headStart;
    this.buffer[at++] = NAME;
    at = writeVarint(this.buffer, at, name.length);
    at += name.copy(this.buffer, at);
    this.buffer[at++] = OFFSET;
    at = writeVarint(this.buffer, at, offset);
    this.buffer[at++] = TOTAL;
    at = writeVarint(this.buffer, at, total);
    this.buffer[at++] = PAYLOAD;
    at = writeVarint(this.buffer, at, length);
    this.payload = this.buffer.subarray(room, room + length);
  }

  /** The chunk's encoding once the payload is in, with its crc32 after it. */
  seal(crc32: number): EncodedTensorChunk {
    let at = this.payload.byteOffset - this.buffer.byteOffset + this.payload.length;
    this.buffer[at++] = CRC32;
    at = writeVarint(this.buffer, at, crc32);
    return new EncodedTensorChunk(this.buffer.subarray(this.headStart, at));
  }
}

/**
 * Decodes a TensorChunk as proto3 allows it to arrive: fields in any order, defaults left out, unknown fields
 * skipped. The payload is a view of `bytes` (grpc-js hands each message over in a buffer of its own).
 */
export function decodeTensorChunk(bytes: Buffer): TensorChunk {
  const chunk: TensorChunk = { name: "", offset: 0, total: 0, payload: bytes.subarray(0, 0), crc32: 0 };
  let at = 0;
  while (at < bytes.length) {
    const [tag, afterTag] = readVarint(bytes, at);
    at = afterTag;
    const wireType = tag % 8;
    const field = Math.floor(tag / 8);
    if (wireType === 0) {
      const [value, next] = readVarint(bytes, at);
      at = next;
      if (field === 2) chunk.offset = value;
      else if (field === 3) chunk.total = value;
      // uint32 keeps the low 32 bits of a longer varint.
      else if (field === 5) chunk.crc32 = value % 2 ** 32;
    } else if (wireType === 2) {
      const [length, start] = readVarint(bytes, at);
      at = start + length;
      if (at > bytes.length) throw new Error(`TensorChunk: field ${field} runs past the message's end`);
      if (field === 1) chunk.name = bytes.toString("utf8", start, at);
      else if (field === 4) chunk.payload = bytes.subarray(start, at);
    } else if (wireType === 1) at += 8;
    else if (wireType === 5) at += 4;
    else
      throw new Error(`TensorChunk: wire type ${wireType} of field ${field} is not one a message can hold`);
  }
  if (at > bytes.length) throw new Error("TensorChunk: the last field runs past the message's end");
  return chunk;
}

/**
 * The service with FetchTensors' own codec: the server sends EncodedTensorChunk's bytes as they are (other
 * values through protobufjs), the client decodes with decodeTensorChunk.
 */
export function withTensorChunkCodec(service: grpc.ServiceDefinition): grpc.ServiceDefinition {
  const method = service.FetchTensors;
  if (!method) return service;
  const encode = method.responseSerialize;
  return {
    ...service,
    FetchTensors: {
      ...method,
      responseSerialize: (value: unknown) =>
        value instanceof EncodedTensorChunk ? value.bytes : encode(value as never),
      responseDeserialize: decodeTensorChunk,
    },
  };
}

function varintLength(value: number): number {
  let n = 1;
  for (let v = value; v >= 128; v = Math.floor(v / 128)) n++;
  return n;
}

/** Writes a non-negative integer (at most 2^53) as a varint; returns the index after it. */
function writeVarint(into: Buffer, at: number, value: number): number {
  let v = value;
  while (v >= 128) {
    into[at++] = (v % 128) | 128;
    v = Math.floor(v / 128);
  }
  into[at++] = v;
  return at;
}

/** A varint as a number (exact up to 2^53, which every length and offset here is under) and the index after it. */
function readVarint(bytes: Buffer, at: number): [number, number] {
  let value = 0;
  let scale = 1;
  for (let i = at; i < bytes.length && i < at + 10; i++) {
    const b = bytes[i];
    value += (b & 127) * scale;
    if (b < 128) return [value, i + 1];
    scale *= 128;
  }
  throw new Error(`TensorChunk: a varint at byte ${at} is cut off or longer than 10 bytes`);
}
