// roundtrip.cpp: a small RAII wrapper over libspate, and a round trip through an embedded
// broker: start a broker, create a topic, produce three records, read them back, stop.
//
//   c++ -std=c++17 -Wall -Wextra -Werror -Ibindings-c/include roundtrip.cpp libspate.a -lpthread -ldl -lm
#include <cstdint>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "spate.h"

namespace spate {

// Throws the last error of this thread when a call failed.
inline void check(spate_status status, const char *what) {
    if (status != SPATE_STATUS_OK) {
        throw std::runtime_error(std::string(what) + ": " + spate_last_error_message());
    }
}

template <typename T, void (*Free)(T *)>
struct Deleter {
    void operator()(T *handle) const { Free(handle); }
};

inline void stop_broker(spate_broker *broker) { spate_broker_stop(broker); }

using ConfigHandle = std::unique_ptr<spate_config, Deleter<spate_config, spate_config_free>>;
using ProducerHandle = std::unique_ptr<spate_producer, Deleter<spate_producer, spate_producer_free>>;
using ConsumerHandle = std::unique_ptr<spate_consumer, Deleter<spate_consumer, spate_consumer_free>>;
using MessageHandle = std::unique_ptr<spate_message, Deleter<spate_message, spate_message_free>>;
using AdminHandle = std::unique_ptr<spate_admin, Deleter<spate_admin, spate_admin_free>>;
using BrokerHandle = std::unique_ptr<spate_broker, Deleter<spate_broker, stop_broker>>;

class Config {
public:
    Config() : handle_(spate_config_new()) {}
    Config &set(const char *name, const std::string &value) {
        check(spate_config_set(handle_.get(), name, value.c_str()), name);
        return *this;
    }
    const spate_config *get() const { return handle_.get(); }

private:
    ConfigHandle handle_;
};

class Broker {
public:
    Broker() {
        spate_broker *broker = nullptr;
        check(spate_broker_start(nullptr, 0, &broker), "spate_broker_start");
        handle_.reset(broker);
    }
    std::string bootstrap_servers() const { return spate_broker_bootstrap_servers(handle_.get()); }

private:
    BrokerHandle handle_;
};

class Admin {
public:
    explicit Admin(const Config &config) {
        spate_admin *admin = nullptr;
        check(spate_admin_new(config.get(), &admin), "spate_admin_new");
        handle_.reset(admin);
    }
    void create_topic(const std::string &name, int32_t partitions) {
        check(spate_admin_create_topic(handle_.get(), name.c_str(), partitions, -1), "create_topic");
    }

private:
    AdminHandle handle_;
};

class Producer {
public:
    explicit Producer(const Config &config) {
        spate_producer *producer = nullptr;
        check(spate_producer_new(config.get(), &producer), "spate_producer_new");
        handle_.reset(producer);
    }
    void send(const std::string &topic, int32_t partition, std::string_view key, std::string_view value) {
        check(spate_producer_send(handle_.get(), topic.c_str(), partition,
                                  reinterpret_cast<const uint8_t *>(key.data()), key.size(),
                                  reinterpret_cast<const uint8_t *>(value.data()), value.size(),
                                  nullptr, 0, SPATE_TIMESTAMP_NOW, nullptr, nullptr),
              "spate_producer_send");
    }
    void flush(int32_t timeout_ms) { check(spate_producer_flush(handle_.get(), timeout_ms), "flush"); }

private:
    ProducerHandle handle_;
};

struct Record {
    int32_t partition;
    int64_t offset;
    std::string key;
    std::string value;
};

class Consumer {
public:
    explicit Consumer(const Config &config) {
        spate_consumer *consumer = nullptr;
        check(spate_consumer_new(config.get(), &consumer), "spate_consumer_new");
        handle_.reset(consumer);
    }
    void assign(const std::string &topic, int32_t partition) {
        spate_topic_partition assigned = {topic.c_str(), partition, -1};
        check(spate_consumer_assign(handle_.get(), &assigned, 1), "spate_consumer_assign");
    }
    // The next record, or false when none arrived within timeout_ms.
    bool poll(int32_t timeout_ms, Record &record) {
        spate_message *raw = nullptr;
        check(spate_consumer_poll(handle_.get(), timeout_ms, &raw), "spate_consumer_poll");
        MessageHandle message(raw);
        if (!message) {
            return false;
        }
        size_t key_len = 0, value_len = 0;
        const uint8_t *key = spate_message_key(message.get(), &key_len);
        const uint8_t *value = spate_message_value(message.get(), &value_len);
        record.partition = spate_message_partition(message.get());
        record.offset = spate_message_offset(message.get());
        record.key.assign(reinterpret_cast<const char *>(key), key ? key_len : 0);
        record.value.assign(reinterpret_cast<const char *>(value), value ? value_len : 0);
        return true;
    }

private:
    ConsumerHandle handle_;
};

}  // namespace spate

int main() {
    try {
        spate::Broker broker;
        spate::Config config;
        config.set("bootstrap.servers", broker.bootstrap_servers());
        spate::Admin(config).create_topic("roundtrip", 1);
        {
            spate::Producer producer(config);
            for (int i = 0; i < 3; i++) {
                producer.send("roundtrip", 0, "key-" + std::to_string(i), "value-" + std::to_string(i));
            }
            producer.flush(30000);
        }
        config.set("auto.offset.reset", "earliest");
        spate::Consumer consumer(config);
        consumer.assign("roundtrip", 0);
        std::vector<spate::Record> records;
        spate::Record record;
        while (records.size() < 3 && consumer.poll(10000, record)) {
            records.push_back(record);
        }
        for (const auto &got : records) {
            std::cout << got.partition << " " << got.offset << " " << got.key << " " << got.value << "\n";
        }
        return records.size() == 3 ? 0 : 1;
    } catch (const std::exception &error) {
        std::cerr << error.what() << "\n";
        return 1;
    }
}
