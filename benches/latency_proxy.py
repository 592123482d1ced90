"""A TCP proxy on loopback that holds each chunk a client sends for a
fixed time before passing it on: every request to the server behind it
then waits that long, as over a network with that round trip. For
benches/s3_reads.sh (LATENCY_MS); loopback has no round trip to speak of.

    python3 benches/latency_proxy.py LISTEN_PORT SERVER_PORT DELAY_MS
"""
import asyncio
import sys


async def pipe(reader, writer, delay):
    try:
        while data := await reader.read(1 << 16):
            if delay:
                await asyncio.sleep(delay)
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main(listen, server, delay):
    async def serve(client_reader, client_writer):
        reader, writer = await asyncio.open_connection("127.0.0.1", server)
        await asyncio.gather(
            pipe(client_reader, writer, delay), pipe(reader, client_writer, 0)
        )

    proxy = await asyncio.start_server(serve, "127.0.0.1", listen)
    async with proxy:
        await proxy.serve_forever()


if __name__ == "__main__":
    listen, server, delay_ms = (int(a) for a in sys.argv[1:4])
    asyncio.run(main(listen, server, delay_ms / 1000))
