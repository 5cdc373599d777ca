"""Real stream brokers for the feature store's consumer tests: NATS JetStream and RabbitMQ (the
local servers), Kafka (a `tansu` broker started for the session; scripts/install-tansu.sh builds it
once and caches it) — each behind the same small interface, so one test body checks every consumer."""
import asyncio
import json
import os
import pathlib
import subprocess
import tempfile
import time
import uuid

from conftest import free_port

NATS_URL = "nats://127.0.0.1:4222"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/%2f"
TANSU = pathlib.Path(os.environ.get(
    "FLOTILLA_TANSU", pathlib.Path.home() / ".cache" / "flotilla" / "tansu" / "bin" / "tansu"))


def declaration(**settings):
    """A feature view's `stream = { ... }` line."""
    return "stream = { " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in settings.items()) + " }"


def encode(payload):
    return payload if isinstance(payload, bytes) else json.dumps(payload).encode()


class NatsSource:
    kind = "nats"

    def __init__(self):
        tag = uuid.uuid4().hex[:10]
        self.subject = f"flotilla_test.{tag}.txn"
        self.stream = f"FLOTILLA_TEST_{tag.upper()}"
        self.label = f"nats:{self.subject}"
        self.dead_letter = f"{self.subject}.dead_letter"

    def decl(self, **extra):
        return declaration(type="nats", subject=self.subject, stream=self.stream, **extra)

    def publish(self, payloads):
        async def go():
            import nats
            nc = await nats.connect(NATS_URL)
            js = nc.jetstream()
            for p in payloads:
                await js.publish(self.subject, encode(p))
            await nc.close()
        asyncio.run(go())

    def committed(self, durable="flotilla-txn"):
        """Messages the durable consumer has acknowledged (it acks only after the durable write)."""
        async def go():
            import nats
            from nats.js.errors import NotFoundError
            nc = await nats.connect(NATS_URL)
            try:
                return (await nc.jetstream().consumer_info(self.stream, durable)).ack_floor.consumer_seq
            except NotFoundError:
                return 0
            finally:
                await nc.close()
        return asyncio.run(go())

    def dead_letters(self, count):
        async def go():
            import nats
            nc = await nats.connect(NATS_URL)
            sub = await nc.jetstream().pull_subscribe(self.dead_letter, durable=None)
            msgs = await sub.fetch(count, timeout=10)
            await nc.close()
            return [json.loads(m.data) for m in msgs]
        return asyncio.run(go())

    def close(self):
        async def go():
            import nats
            nc = await nats.connect(NATS_URL)
            for name in (self.stream, f"{self.stream}_DEAD_LETTER"):
                try:
                    await nc.jetstream().delete_stream(name)
                except Exception:
                    pass
            await nc.close()
        asyncio.run(go())


class KafkaBroker:
    """A tansu Kafka-protocol broker with in-memory storage on a free port."""

    def __init__(self):
        if not TANSU.exists():
            raise RuntimeError(f"no tansu broker at {TANSU}: run scripts/install-tansu.sh (scripts/test.sh does)")
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self.log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [str(TANSU), "broker",
             "--listener-url", f"tcp://{self.address}",
             "--advertised-listener-url", f"tcp://{self.address}",
             "--storage-engine", f"memory://tansu-{port}/",
             "--cluster-id", "flotilla-tests"],
            stdout=self.log, stderr=subprocess.STDOUT)
        from confluent_kafka.admin import AdminClient
        deadline = time.time() + 30
        while True:
            try:
                AdminClient({"bootstrap.servers": self.address}).list_topics(timeout=2)
                return
            except Exception:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError("tansu did not start:\n" + pathlib.Path(self.log.name).read_text())
                time.sleep(0.2)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class KafkaSource:
    kind = "kafka"

    def __init__(self, broker):
        tag = uuid.uuid4().hex[:10]
        self.broker = broker.address
        self.topic = f"flotilla_test_{tag}"
        self.group = f"flotilla_test_{tag}"
        self.label = f"kafka:{self.topic}"
        self.dead_letter = f"{self.topic}.dead_letter"

    def decl(self, **extra):
        return declaration(type="kafka", brokers=self.broker, topic=self.topic, group=self.group, **extra)

    def publish(self, payloads):
        from confluent_kafka import Producer
        # One record per batch: tansu 0.6 answers a fetch from an offset inside a record batch
        # with the *next* batch (a Kafka broker returns the batch holding the offset), so a
        # consumer resuming from a commit in the middle of a multi-record batch would never see
        # the rest of that batch. Kafka itself does not need this.
        producer = Producer({"bootstrap.servers": self.broker, "linger.ms": 0, "batch.num.messages": 1})
        for p in payloads:
            key = str(p.get("card_id")).encode() if isinstance(p, dict) else None
            while True:
                try:
                    producer.produce(self.topic, value=encode(p), key=key)
                    break
                except BufferError:  # the local queue is full: let it drain
                    producer.poll(0.1)
            producer.poll(0)
        assert producer.flush(30) == 0, "messages left unsent"

    def dead_letters(self, count):
        from confluent_kafka import Consumer
        consumer = Consumer({"bootstrap.servers": self.broker, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})
        consumer.subscribe([self.dead_letter])
        out, deadline = [], time.time() + 30
        while len(out) < count and time.time() < deadline:
            m = consumer.poll(0.5)
            if m is not None and m.error() is None:
                out.append(json.loads(m.value()))
        consumer.close()
        return out

    def committed(self):
        """Messages the group has committed (Flotilla commits only after the durable write)."""
        from confluent_kafka import Consumer, TopicPartition
        from confluent_kafka.admin import AdminClient
        partitions = AdminClient({"bootstrap.servers": self.broker}).list_topics(self.topic, timeout=10) \
            .topics[self.topic].partitions
        probe = Consumer({"bootstrap.servers": self.broker, "group.id": self.group})
        try:
            offsets = probe.committed([TopicPartition(self.topic, p) for p in partitions], timeout=10)
        finally:
            probe.close()
        return sum(max(tp.offset, 0) for tp in offsets)

    def close(self):
        pass  # the broker keeps topics in memory only


class RabbitSource:
    kind = "rabbitmq"

    def __init__(self):
        tag = uuid.uuid4().hex[:10]
        self.queue = f"flotilla_test.{tag}.txn"
        self.label = f"rabbitmq:{self.queue}"
        self.dead_letter = f"{self.queue}.dead_letter"
        self.published = 0

    @staticmethod
    def connect():
        import pika
        return pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))

    def decl(self, **extra):
        return declaration(type="rabbitmq", queue=self.queue, url=RABBITMQ_URL, **extra)

    def publish(self, payloads):
        """Persistent messages on the durable queue (declared as the consumer declares it), committed
        in transactions of 1,000: each commit returns once the broker holds its messages."""
        import pika
        persistent = pika.BasicProperties(delivery_mode=2)
        with self.connect() as conn:
            ch = conn.channel()
            ch.queue_declare(self.queue, durable=True)
            ch.tx_select()
            for i, p in enumerate(payloads, 1):
                ch.basic_publish("", self.queue, encode(p), persistent)
                if i % 1000 == 0:
                    ch.tx_commit()
            ch.tx_commit()
        self.published += len(payloads)

    def committed(self):
        """Messages acknowledged (Flotilla acks only after the durable write): those published less
        those still in the queue, ready or delivered and unacknowledged. A passive declare counts only
        the ready ones, which is exact with no consumer attached (the broker puts a consumer's
        unacknowledged deliveries back when its connection ends, kill -9 included); with one
        attached, the local broker's own `rabbitmqctl` counts both at once."""
        import pika
        with self.connect() as conn:
            try:
                q = conn.channel().queue_declare(self.queue, passive=True).method
            except pika.exceptions.ChannelClosedByBroker as e:
                if e.reply_code == 404:
                    return 0
                raise
        if q.consumer_count == 0:
            return self.published - q.message_count
        out = subprocess.run(["rabbitmqctl", "list_queues", "-q", "--no-table-headers",
                              "name", "messages_ready", "messages_unacknowledged"],
                             check=True, capture_output=True, text=True, timeout=60).stdout
        for line in out.splitlines():
            name, ready, unacked = line.split("\t")
            if name == self.queue:
                return self.published - int(ready) - int(unacked)
        raise AssertionError(f"rabbitmqctl does not list queue {self.queue}:\n{out}")

    def dead_letters(self, count):
        """Up to `count` dead letters, left in their queue (read without acknowledging)."""
        out, deadline = [], time.time() + 30
        with self.connect() as conn:
            ch = conn.channel()
            while len(out) < count and time.time() < deadline:
                _, _, body = ch.basic_get(self.dead_letter, auto_ack=False)
                if body is None:
                    time.sleep(0.2)
                else:
                    out.append(json.loads(body))
        return out

    def close(self):
        with self.connect() as conn:
            for name in (self.queue, self.dead_letter):
                conn.channel().queue_delete(name)
